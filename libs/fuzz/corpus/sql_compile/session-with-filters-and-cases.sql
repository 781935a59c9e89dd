-- Sessions per user, bots excluded.
SELECT user_id, window_start, window_end,
       COUNT(*) AS events, COUNT(DISTINCT page) AS pages,
       SUM(CASE WHEN country IN ('de', 'at', 'ch') THEN duration_ms ELSE 0 END) AS dach_ms,
       MAX(CAST(score AS DOUBLE)) AS best, MIN(lower(page)) AS first_page,
       approx_percentile_cont(0.9) WITHIN GROUP (ORDER BY duration_ms) AS p90
FROM SESSION(clicks, event_time, INTERVAL '30' MINUTE)
WHERE (bot IS NULL OR NOT bot) AND page LIKE '/%' AND coalesce(referrer, '') <> 'x'
GROUP BY user_id, window_start, window_end
