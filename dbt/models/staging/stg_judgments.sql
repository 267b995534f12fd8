select
    query,
    'homedepot:' || product_id as product_key,
    grade,
    source
from {{ source('skulens', 'judgments') }}
