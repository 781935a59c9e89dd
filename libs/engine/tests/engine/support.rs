//! Helpers shared by the engine's tests.

use arrow::array::RecordBatch;

/// Appends `batches` as JSON lines, each prefixed with `prefix` and a space.
pub(crate) fn render(batches: &[RecordBatch], prefix: &str, out: &mut String) {
    for batch in batches {
        let mut writer = arrow::json::LineDelimitedWriter::new(Vec::new());
        writer.write(batch).expect("render batch");
        writer.finish().expect("finish rendering");
        let text = String::from_utf8(writer.into_inner()).expect("json is utf-8");
        for line in text.lines() {
            out.push_str(prefix);
            out.push(' ');
            out.push_str(line);
            out.push('\n');
        }
    }
}
