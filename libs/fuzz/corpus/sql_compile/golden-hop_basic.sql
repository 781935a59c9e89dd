SELECT k, window_start, window_end, COUNT(*) AS n, SUM(v) AS total
FROM HOP(s, ts, INTERVAL '10' SECOND, INTERVAL '30' SECOND)
GROUP BY k, window_start, window_end
