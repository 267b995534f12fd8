-- Training pairs of both kinds in one shape.
select 'image_text' as dataset, split, view as kind, product_id, null as query, weight
from {{ source('skulens', 'pairs_image_text') }}
union all
select 'query_product' as dataset, split, source as kind, product_id, query, weight
from {{ source('skulens', 'pairs_query_product') }}
