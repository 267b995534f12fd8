-- Per product: impressions, clicks, carts, purchases, CTR, and its mean human grade.
with engagement as (
    select
        product_key,
        sum(case when event_type = 'impression' then 1 else 0 end) as impressions,
        sum(case when event_type = 'click' then 1 else 0 end) as clicks,
        sum(case when event_type = 'add_to_cart' then 1 else 0 end) as add_to_carts,
        sum(case when event_type = 'purchase' then 1 else 0 end) as purchases
    from {{ ref('stg_events') }}
    group by product_key
),
grades as (
    select product_key, avg(grade) as mean_grade, count(*) as judgments
    from {{ ref('stg_judgments') }}
    group by product_key
)
select
    e.product_key,
    p.title,
    e.impressions,
    e.clicks,
    e.add_to_carts,
    e.purchases,
    case when e.impressions > 0 then e.clicks * 1.0 / e.impressions end as ctr,
    g.mean_grade,
    coalesce(g.judgments, 0) as judgments
from engagement e
join {{ ref('stg_products') }} p using (product_key)
left join grades g using (product_key)
