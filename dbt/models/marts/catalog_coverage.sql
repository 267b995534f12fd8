-- Per catalogue and top category: products, share with a photo, with a colour, canonical share.
select
    catalog,
    coalesce(category_top, '(none)') as category_top,
    count(*) as products,
    avg(case when has_photo then 1.0 else 0.0 end) as share_with_photo,
    avg(case when colour is not null then 1.0 else 0.0 end) as share_with_colour,
    avg(case when is_canonical then 1.0 else 0.0 end) as share_canonical
from {{ ref('stg_products') }}
group by catalog, coalesce(category_top, '(none)')
