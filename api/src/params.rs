//! Parameter types whose OpenAPI schema states exactly what the API accepts, so a client built
//! from the document (or a schema fuzzer) and the API agree on what is valid.

use poem::http::HeaderValue;
use poem_openapi::registry::{MetaSchema, MetaSchemaRef};
use poem_openapi::types::{
    ParseError, ParseFromJSON, ParseFromParameter, ParseResult, ToHeader, ToJSON, Type,
};
use serde_json::Value;
use std::borrow::Cow;
use wtm_core::time::{format_rfc3339, parse_rfc3339};

/// An instant given as an RFC 3339 date-time (`format: date-time`): any offset, any number of
/// fractional digits (kept to the millisecond), lowercase `t`/`z`, years 0000–9999.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rfc3339(pub i64);

impl Rfc3339 {
    fn parse(s: &str) -> Result<Rfc3339, String> {
        parse_rfc3339(s).map(Rfc3339).ok_or_else(|| {
            format!("must be an RFC 3339 time such as 2026-01-01T00:00:00Z, got {s:?}")
        })
    }
}

impl Type for Rfc3339 {
    const IS_REQUIRED: bool = true;
    type RawValueType = Self;
    type RawElementValueType = Self;

    fn name() -> Cow<'static, str> {
        "string_date_time".into()
    }

    fn schema_ref() -> MetaSchemaRef {
        MetaSchemaRef::Inline(Box::new(MetaSchema::new_with_format("string", "date-time")))
    }

    fn as_raw_value(&self) -> Option<&Self::RawValueType> {
        Some(self)
    }

    fn raw_element_iter<'a>(
        &'a self,
    ) -> Box<dyn Iterator<Item = &'a Self::RawElementValueType> + 'a> {
        Box::new(self.as_raw_value().into_iter())
    }
}

impl ParseFromParameter for Rfc3339 {
    fn parse_from_parameter(value: &str) -> ParseResult<Self> {
        Rfc3339::parse(value).map_err(ParseError::custom)
    }
}

impl ParseFromJSON for Rfc3339 {
    fn parse_from_json(value: Option<Value>) -> ParseResult<Self> {
        match value.unwrap_or_default() {
            Value::String(s) => Rfc3339::parse(&s).map_err(ParseError::custom),
            other => Err(ParseError::expected_type(other)),
        }
    }
}

impl ToJSON for Rfc3339 {
    fn to_json(&self) -> Option<Value> {
        Some(Value::String(format_rfc3339(self.0)))
    }
}

impl ToHeader for Rfc3339 {
    fn to_header(&self) -> Option<HeaderValue> {
        HeaderValue::from_str(&format_rfc3339(self.0)).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_rfc3339_and_says_what_is_wrong() {
        assert_eq!(
            Rfc3339::parse("2026-01-01T01:00:00+01:00"),
            Ok(Rfc3339(1_767_225_600_000))
        );
        assert!(Rfc3339::parse("2026-01-01t00:00:00.123456789z").is_ok());
        assert!(Rfc3339::parse("0001-01-01T00:00:00Z").is_ok());
        let err = Rfc3339::parse("yesterday").unwrap_err();
        assert!(
            err.contains("RFC 3339") && err.contains("yesterday"),
            "{err}"
        );
    }
}
