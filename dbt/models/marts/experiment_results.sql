-- Per experiment and arm: shoppers, searches, clicks, carts and purchases, CTR and per-shopper
-- rates. The experiment name travels in each service search record's versions (simulated events
-- carry their own); intervals, the sample-ratio check and the sample size still needed are computed
-- over shoppers by `skulens experiments report NAME` from the same events table.
select
    origin,
    experiment,
    coalesce(variant, 'control') as arm,
    count(distinct coalesce(user_id, session_id)) as users,
    count(distinct search_id) as searches,
    sum(case when event_type = 'click' then 1 else 0 end) as clicks,
    sum(case when event_type = 'add_to_cart' then 1 else 0 end) as carts,
    sum(case when event_type = 'purchase' then 1 else 0 end) as purchases,
    sum(case when event_type = 'click' then 1 else 0 end) * 1.0 / nullif(count(distinct search_id), 0) as ctr,
    sum(case when event_type = 'purchase' then 1 else 0 end) * 1.0
        / nullif(count(distinct coalesce(user_id, session_id)), 0) as purchases_per_user
from {{ ref('stg_events') }}
where experiment is not null
group by 1, 2, 3
