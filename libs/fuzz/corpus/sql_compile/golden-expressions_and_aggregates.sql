SELECT upper(page) AS page, window_start, window_end,
       COUNT(*) AS views,
       COUNT(DISTINCT user_id) AS users,
       approx_distinct(user_id) AS approx_users,
       MIN(duration_ms) AS min_ms,
       AVG(duration_ms) AS avg_ms,
       SUM(duration_ms) * 1.0 / COUNT(*) AS mean_ms,
       COUNT(referrer) AS with_referrer,
       approx_percentile_cont(0.5) WITHIN GROUP (ORDER BY duration_ms) AS p50_ms,
       approx_median(duration_ms) AS median_ms
FROM TUMBLE(clicks, event_time, INTERVAL '1' MINUTE)
WHERE duration_ms > 0 AND country IN ('de', 'fr')
GROUP BY upper(page), window_start, window_end
