-- Every search event with a search_id and its origin: 'service' (what the running service logged,
-- through the stream job's events table) and 'simulated' (the simulator's log of the homedepot
-- catalogue, until real logs replace it). Search rows of the service are left out: the marts count
-- impressions, clicks, carts and purchases.
with simulated as (
    select
        event_id,
        ts,
        user_id,
        session_id,
        query,
        'homedepot:' || product_id as product_key,
        event_type,
        position,
        experiment,
        variant,
        sum(case when event_type = 'impression' and position = 1 then 1 else 0 end)
            over (partition by session_id order by ts, event_id rows between unbounded preceding and current row)
            as search_seq
    from {{ source('skulens', 'events') }}
),
service as (
    select
        event_id,
        cast(ts as timestamp with time zone) as ts,
        user_id,
        session_id,
        query,
        catalog || ':' || product_id as product_key,
        event_type,
        position,
        json_extract_string(versions, '$.experiment') as experiment,
        variant,
        search_id
    from {{ source('skulens', 'service_events') }}
    where event_type <> 'search'
)
select
    event_id, ts, user_id, session_id, query, product_key, event_type, position, experiment, variant,
    session_id || '#' || cast(search_seq as varchar) as search_id, 'simulated' as origin
from simulated
union all
select
    event_id, ts, user_id, session_id, query, product_key, event_type, position, experiment, variant,
    search_id, 'service' as origin
from service
