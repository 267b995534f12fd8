-- Training pairs per dataset, split and kind (text view or pair source).
select
    dataset,
    split,
    kind,
    count(*) as pairs,
    count(distinct product_id) as products,
    count(distinct query) as queries,
    avg(weight) as mean_weight
from {{ ref('stg_pairs') }}
group by dataset, split, kind
