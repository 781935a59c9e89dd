SELECT window_start, window_end, COUNT(*) AS orders, COUNT(p.amount) AS payments, SUM(p.amount) AS paid
FROM TUMBLE(orders, et, INTERVAL '1' MINUTE) AS o
LEFT JOIN payments AS p ON o.order_id = p.order_id AND p.et BETWEEN o.et AND o.et + INTERVAL '10' SECOND
GROUP BY window_start, window_end
