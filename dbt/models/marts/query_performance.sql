-- Per query: searches, impressions, clicks, CTR, zero-click rate, mean click position.
with searches as (
    select
        query,
        search_id,
        sum(case when event_type = 'impression' then 1 else 0 end) as impressions,
        sum(case when event_type = 'click' then 1 else 0 end) as clicks,
        avg(case when event_type = 'click' then position end) as mean_click_position
    from {{ ref('stg_events') }}
    where query is not null
    group by query, search_id
)
select
    query,
    count(*) as searches,
    sum(impressions) as impressions,
    sum(clicks) as clicks,
    case when sum(impressions) > 0 then sum(clicks) * 1.0 / sum(impressions) end as ctr,
    avg(case when clicks = 0 then 1.0 else 0.0 end) as zero_click_rate,
    sum(mean_click_position * clicks) / nullif(sum(clicks), 0) as mean_click_position
from searches
group by query
