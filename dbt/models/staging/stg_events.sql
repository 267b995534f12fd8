-- Events with a search_id: a search starts at each position-1 impression of a session, and the
-- clicks, carts and purchases that follow belong to it.
with ordered as (
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
)
select *, session_id || '#' || cast(search_seq as varchar) as search_id
from ordered
