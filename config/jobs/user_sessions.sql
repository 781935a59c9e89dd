-- Each user's sessions: clicks at most 30 seconds apart, with their pages and time spent.
SELECT user_id, window_start, window_end,
       COUNT(*) AS clicks, COUNT(DISTINCT page) AS pages, SUM(duration_ms) AS total_ms
FROM SESSION(clicks, event_time, INTERVAL '30' SECOND)
GROUP BY user_id, window_start, window_end
