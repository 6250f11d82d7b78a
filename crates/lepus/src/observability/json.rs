//! JSON log lines, one object per line, written straight into the output buffer.
//!
//! `tracing-subscriber`'s own JSON formatter collects every span's and event's fields in
//! a map of `serde_json` values before writing them, and re-parses a span's fields each
//! time one more is recorded; lepus creates a span per message, so that cost is paid
//! millions of times. Here span fields are written once, as JSON text, when the span is
//! created, and the OpenTelemetry trace and span ids are looked up only when a line is
//! actually written, for whatever span is current, lepus's or the application's.
//!
//! A line looks like this (one line, wrapped here):
//!
//! ```text
//! {"timestamp":"2026-11-26T07:00:00.000000Z","level":"INFO","target":"shop::inventory",
//!  "fields":{"message":"order decided","order_id":"o-1"},
//!  "span":{"name":"handle","messaging.system":"rabbitmq","attempt":1},
//!  "trace_id":"4bf92f3577b34da6a3ce929d0e0e4736","span_id":"00f067aa0ba902b7"}
//! ```

use std::fmt::{self, Write as _};
use std::sync::{Arc, OnceLock};

use opentelemetry::trace::TraceContextExt;
use tracing::dispatcher::WeakDispatch;
use tracing::field::{Field, Visit};
use tracing::span::{Id, Record};
use tracing::{Dispatch, Event, Subscriber};
use tracing_subscriber::Layer;
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields, MakeWriter};
use tracing_subscriber::registry::LookupSpan;

/// The layer that writes JSON lines to `writer` (see the module's documentation).
pub(crate) fn layer<S, W>(writer: W) -> impl Layer<S>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let dispatch = Arc::new(OnceLock::new());
    tracing_subscriber::fmt::layer()
        .fmt_fields(JsonFields)
        .event_format(JsonLines {
            dispatch: Arc::clone(&dispatch),
        })
        .with_writer(writer)
        .and_then(RegisterDispatch(dispatch))
}

/// Formats span fields as a JSON object, written directly (no intermediate map). Fields
/// recorded later are appended to the object.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct JsonFields;

thread_local! {
    /// Where span fields are put together before they are written out in one piece (the
    /// span's own string then grows once instead of a few times per field).
    static SCRATCH: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
}

impl<'w> FormatFields<'w> for JsonFields {
    fn format_fields<R: RecordFields>(&self, mut writer: Writer<'w>, fields: R) -> fmt::Result {
        SCRATCH.with(|scratch| match scratch.try_borrow_mut() {
            Ok(mut text) => {
                text.clear();
                write_object(&mut *text, fields)?;
                writer.write_str(&text)
            }
            // Formatting inside formatting (a field whose `Debug` logs): no scratch.
            Err(_) => write_object(&mut writer, fields),
        })
    }

    fn add_fields(
        &self,
        current: &'w mut FormattedFields<Self>,
        fields: &Record<'_>,
    ) -> fmt::Result {
        // `current.fields` is `{...}` as written above: reopen the object, add, close it.
        if current.fields.pop() != Some('}') {
            current.fields.clear();
            current.fields.push('{');
        }
        let first = current.fields.len() <= 1;
        let mut text = std::mem::take(&mut current.fields);
        let mut object = JsonObject::new(&mut text, first);
        fields.record(&mut object);
        let result = object.result;
        text.push('}');
        current.fields = text;
        result
    }
}

fn write_object<W: fmt::Write, R: RecordFields>(out: &mut W, fields: R) -> fmt::Result {
    out.write_char('{')?;
    let mut object = JsonObject::new(out, true);
    fields.record(&mut object);
    object.result?;
    out.write_char('}')
}

/// The event formatter of lepus's JSON lines: timestamp, level, target, the event's
/// fields, the current span (its name and fields) and its trace and span ids.
struct JsonLines {
    /// The dispatcher this layer belongs to, for the OpenTelemetry layer's ids. It cannot
    /// be looked up while a line is written: inside a dispatcher's callback the thread's
    /// current dispatcher is a no-op one, which guards against recursion.
    dispatch: Arc<OnceLock<WeakDispatch>>,
}

/// Tells [`JsonLines`] which dispatcher it belongs to, once the subscriber is built.
struct RegisterDispatch(Arc<OnceLock<WeakDispatch>>);

impl<S: Subscriber> Layer<S> for RegisterDispatch {
    fn on_register_dispatch(&self, dispatch: &Dispatch) {
        let _ = self.0.set(dispatch.downgrade());
    }
}

impl<S> FormatEvent<S, JsonFields> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, JsonFields>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let meta = event.metadata();
        writer.write_str("{\"timestamp\":\"")?;
        SystemTime.format_time(&mut writer)?;
        write!(writer, "\",\"level\":\"{}\",\"target\":", meta.level())?;
        write_str_value(&mut writer, meta.target())?;
        writer.write_str(",\"fields\":{")?;
        let mut object = JsonObject::new(&mut writer, true);
        event.record(&mut object);
        object.result?;
        writer.write_char('}')?;

        let span = event
            .parent()
            .and_then(|id| ctx.span(id))
            .or_else(|| ctx.lookup_current());
        if let Some(span) = span {
            // Ids first: looking them up takes the span's extensions on its own.
            let ids = self.otel_ids(&span.id());
            writer.write_str(",\"span\":{\"name\":")?;
            write_str_value(&mut writer, span.name())?;
            let extensions = span.extensions();
            if let Some(fields) = extensions.get::<FormattedFields<JsonFields>>() {
                let inner = fields
                    .fields
                    .strip_prefix('{')
                    .and_then(|f| f.strip_suffix('}'))
                    .unwrap_or_default();
                if !inner.is_empty() {
                    writer.write_char(',')?;
                    writer.write_str(inner)?;
                }
            }
            writer.write_char('}')?;
            if let Some((trace_id, span_id)) = ids {
                write!(
                    writer,
                    ",\"trace_id\":\"{trace_id}\",\"span_id\":\"{span_id}\""
                )?;
            }
        }
        writer.write_str("}\n")
    }
}

impl JsonLines {
    /// The OpenTelemetry trace and span ids of the span `id`, if the OpenTelemetry layer
    /// is installed and gave it a valid context.
    fn otel_ids(&self, id: &Id) -> Option<(String, String)> {
        let dispatch = self.dispatch.get()?.upgrade()?;
        let cx = tracing_opentelemetry::get_otel_context(id, &dispatch)?;
        let span = cx.span();
        let sc = span.span_context();
        sc.is_valid()
            .then(|| (sc.trace_id().to_string(), sc.span_id().to_string()))
    }
}

/// Writes `"name":value` pairs, comma-separated, into `out`; remembers the first error.
struct JsonObject<'a, W: fmt::Write> {
    out: &'a mut W,
    first: bool,
    result: fmt::Result,
}

impl<'a, W: fmt::Write> JsonObject<'a, W> {
    fn new(out: &'a mut W, first: bool) -> Self {
        JsonObject {
            out,
            first,
            result: Ok(()),
        }
    }

    fn key(&mut self, field: &Field) -> fmt::Result {
        if !self.first {
            self.out.write_char(',')?;
        }
        self.first = false;
        write_str_value(self.out, field.name())?;
        self.out.write_char(':')
    }

    fn put(&mut self, field: &Field, value: impl FnOnce(&mut W) -> fmt::Result) {
        // `otel.*` fields (span kind, name, status) instruct the OpenTelemetry layer;
        // they say nothing a reader of the line needs.
        if self.result.is_ok() && !field.name().starts_with("otel.") {
            self.result = self.key(field).and_then(|()| value(self.out));
        }
    }
}

impl<W: fmt::Write> Visit for JsonObject<'_, W> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.put(field, |out| write_str_value(out, value));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.put(field, |out| write!(out, "{value}"));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.put(field, |out| write!(out, "{value}"));
    }

    fn record_i128(&mut self, field: &Field, value: i128) {
        self.put(field, |out| write!(out, "{value}"));
    }

    fn record_u128(&mut self, field: &Field, value: u128) {
        self.put(field, |out| write!(out, "{value}"));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.put(field, |out| write!(out, "{value}"));
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        if value.is_finite() {
            self.put(field, |out| write!(out, "{value}"));
        } else {
            // JSON has no NaN or infinity.
            self.put(field, |out| write!(out, "\"{value}\""));
        }
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.put(field, |out| {
            out.write_char('"')?;
            write!(Escaped(out), "{value}")?;
            out.write_char('"')
        });
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.put(field, |out| {
            out.write_char('"')?;
            write!(Escaped(out), "{value:?}")?;
            out.write_char('"')
        });
    }
}

/// Writes `value` as a JSON string.
fn write_str_value<W: fmt::Write + ?Sized>(out: &mut W, value: &str) -> fmt::Result {
    out.write_char('"')?;
    Escaped(out).write_str(value)?;
    out.write_char('"')
}

/// Escapes what passes through it for the inside of a JSON string.
struct Escaped<'a, W: ?Sized>(&'a mut W);

impl<W: fmt::Write + ?Sized> fmt::Write for Escaped<'_, W> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        // Everything that needs escaping is ASCII, so scanning bytes finds only char
        // boundaries, and the plain runs between them are written whole.
        let mut plain = 0;
        for (i, &b) in s.as_bytes().iter().enumerate() {
            let escape = match b {
                b'"' => "\\\"",
                b'\\' => "\\\\",
                b'\n' => "\\n",
                b'\r' => "\\r",
                b'\t' => "\\t",
                0..=0x1f => "",
                _ => continue,
            };
            self.0.write_str(s.get(plain..i).unwrap_or_default())?;
            if escape.is_empty() {
                write!(self.0, "\\u{b:04x}")?;
            } else {
                self.0.write_str(escape)?;
            }
            plain = i + 1;
        }
        self.0.write_str(s.get(plain..).unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn escaped(s: &str) -> String {
        let mut out = String::new();
        write_str_value(&mut out, s).unwrap();
        out
    }

    #[test]
    fn strings_round_trip_through_a_json_parser() {
        for s in [
            "plain",
            "quote \" and \\",
            "line\nbreak\ttab\r",
            "\u{1}\u{1f}",
            "é ✓ 🐇",
            "",
        ] {
            let json = escaped(s);
            let back: String = serde_json::from_str(&json).unwrap();
            assert_eq!(back, s, "{json}");
        }
    }
}
