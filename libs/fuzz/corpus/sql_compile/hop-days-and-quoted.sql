SELECT "page", window_start, window_end, COUNT(*) AS "Views"
FROM HOP("clicks", "event_time", INTERVAL '1' DAY, INTERVAL '7' DAY)
GROUP BY "page", window_start, window_end
