-- Views and time spent per page, per minute, test traffic excluded.
SELECT page, window_start, window_end,
       COUNT(*) AS views, SUM(duration_ms) AS total_ms, MAX(duration_ms) AS max_ms,
       COUNT(DISTINCT user_id) AS users
FROM TUMBLE(clicks, event_time, INTERVAL '1' MINUTE)
WHERE country <> 'test'
GROUP BY page, window_start, window_end
