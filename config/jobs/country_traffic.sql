-- Clicks and time spent per country over the last five minutes, every minute.
SELECT country, window_start, window_end,
       COUNT(*) AS clicks, SUM(duration_ms) AS total_ms, approx_distinct(user_id) AS users
FROM HOP(clicks, event_time, INTERVAL '1' MINUTE, INTERVAL '5' MINUTE)
WHERE country <> 'test'
GROUP BY country, window_start, window_end
