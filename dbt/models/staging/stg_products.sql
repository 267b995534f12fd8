-- One row per product of every catalogue; product_key = catalog:product_id is unique.
select
    'fashion:' || product_id as product_key,
    'fashion' as catalog,
    product_id,
    title,
    category_top,
    category_leaf,
    attributes['colour'] as colour,
    image_uri is not null as has_photo,
    is_canonical
from {{ source('skulens', 'fashion_products') }}
union all
select
    'homedepot:' || product_id as product_key,
    'homedepot' as catalog,
    product_id,
    title,
    null as category_top,
    null as category_leaf,
    null as colour,
    image_uri is not null as has_photo,
    true as is_canonical
from {{ source('skulens', 'homedepot_products') }}
