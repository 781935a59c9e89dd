//! The test streams' config: the `clicks` stream (users clicking pages) in the shape each
//! test needs, as the TOML of one `[[streams]]` table; and the join tests' table `users`
//! over its changelog `user_updates`.

/// A `[[streams]]` table.
#[derive(Debug, Clone)]
pub struct Stream {
    name: String,
    partitions: u32,
    key: Option<String>,
    event_time: String,
    /// (name, type, nullable)
    fields: Vec<(String, String, bool)>,
    /// Further `key = value` lines of the table, as written.
    options: Vec<String>,
    /// A `[[tables]]` table over the stream: its name and tombstone field.
    table: Option<(String, String)>,
}

impl Stream {
    /// The `clicks` stream over `partitions` partitions, keyed by `key`, with `fields` among
    /// `event_time` (timestamp, the event time), `user_id`, `page`, `country` (strings) and
    /// `duration_ms` (int64), in the order given.
    ///
    /// # Panics
    ///
    /// On a field `clicks` does not have.
    pub fn clicks(partitions: u32, key: Option<&str>, fields: &[&str]) -> Stream {
        let fields = fields
            .iter()
            .map(|field| {
                let data_type = match *field {
                    "event_time" => "timestamp",
                    "user_id" | "page" | "country" => "string",
                    "duration_ms" => "int64",
                    other => panic!("`clicks` has no field `{other}`"),
                };
                ((*field).to_string(), data_type.to_string(), false)
            })
            .collect();
        Stream {
            name: "clicks".to_string(),
            partitions,
            key: key.map(str::to_string),
            event_time: "event_time".to_string(),
            fields,
            options: Vec::new(),
            table: None,
        }
    }

    /// The join tests' changelog `user_updates` over `partitions` partitions, keyed by
    /// `user_id`: `event_time`, `user_id`, `country` (may be null) and `deleted` (a bool that
    /// marks a delete, may be null), followed by the `[[tables]]` table `users` over it with
    /// `deleted` as its tombstone ([`Stream::toml`] writes both).
    pub fn user_updates(partitions: u32) -> Stream {
        let field = |name: &str, data_type: &str, nullable: bool| {
            (name.to_string(), data_type.to_string(), nullable)
        };
        Stream {
            name: "user_updates".to_string(),
            partitions,
            key: Some("user_id".to_string()),
            event_time: "event_time".to_string(),
            fields: vec![
                field("event_time", "timestamp", false),
                field("user_id", "string", false),
                field("country", "string", true),
                field("deleted", "bool", true),
            ],
            options: Vec::new(),
            table: Some(("users".to_string(), "deleted".to_string())),
        }
    }

    /// The same stream under another name.
    pub fn named(mut self, name: &str) -> Stream {
        self.name = name.to_string();
        self
    }

    /// `fields` may be null.
    pub fn nullable(mut self, fields: &[&str]) -> Stream {
        for field in &mut self.fields {
            if fields.contains(&field.0.as_str()) {
                field.2 = true;
            }
        }
        self
    }

    /// A further line of the table, e.g. `max-event-time-behind = "1d"`.
    pub fn option(mut self, line: &str) -> Stream {
        self.options.push(line.to_string());
        self
    }

    /// The table's TOML (and the `[[tables]]` table over it, if any), ending with a newline.
    pub fn toml(&self) -> String {
        let mut out = format!(
            "[[streams]]\nname = \"{}\"\npartitions = {}\n",
            self.name, self.partitions
        );
        if let Some(key) = &self.key {
            out.push_str(&format!("key = \"{key}\"\n"));
        }
        out.push_str(&format!("event-time = \"{}\"\n", self.event_time));
        for option in &self.options {
            out.push_str(&format!("{option}\n"));
        }
        out.push_str("schema = [\n");
        for (name, data_type, nullable) in &self.fields {
            let nullable = if *nullable { ", nullable = true" } else { "" };
            out.push_str(&format!(
                "  {{ name = \"{name}\", type = \"{data_type}\"{nullable} }},\n"
            ));
        }
        out.push_str("]\n");
        if let Some((table, tombstone)) = &self.table {
            out.push_str(&format!(
                "\n[[tables]]\nname = \"{table}\"\nstream = \"{}\"\ntombstone = \"{tombstone}\"\n",
                self.name
            ));
        }
        out
    }
}

/// The join tests' config: `clicks` (event_time, user_id, page) and `user_updates`, 2
/// partitions each, keyed by `user_id`, with the table `users` over the second; data in
/// `data_dir`; the stream-processor checkpointing every `checkpoint_interval` (e.g.
/// `"100ms"`), its metrics on a free port; then `jobs`, as written.
pub fn join_config(data_dir: &std::path::Path, checkpoint_interval: &str, jobs: &str) -> String {
    let clicks = Stream::clicks(2, Some("user_id"), &["event_time", "user_id", "page"]).toml();
    let user_updates = Stream::user_updates(2).toml();
    format!(
        "version = \"1\"\n[storage]\ndata-dir = \"{}\"\n[stream-processor]\n\
         checkpoint-interval = \"{checkpoint_interval}\"\nmetrics-listen = \"127.0.0.1:0\"\n\
         {clicks}\n{user_updates}\n{jobs}",
        data_dir.display()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clicks_is_written_as_the_tests_wrote_it() {
        let toml = Stream::clicks(4, Some("user_id"), &["event_time", "user_id", "page"])
            .nullable(&["page"])
            .option("max-event-time-behind = \"1d\"")
            .toml();
        assert_eq!(
            toml,
            "[[streams]]\nname = \"clicks\"\npartitions = 4\nkey = \"user_id\"\n\
             event-time = \"event_time\"\nmax-event-time-behind = \"1d\"\nschema = [\n  \
             { name = \"event_time\", type = \"timestamp\" },\n  \
             { name = \"user_id\", type = \"string\" },\n  \
             { name = \"page\", type = \"string\", nullable = true },\n]\n"
        );
        assert!(
            Stream::clicks(1, None, &["event_time"])
                .named("taps")
                .toml()
                .contains("name = \"taps\"")
        );
    }
}
