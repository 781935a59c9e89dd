SELECT page, COUNT(*) FROM clicks GROUP BY page
