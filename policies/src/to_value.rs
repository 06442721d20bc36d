//! Serializes a typed input straight into a regorus [`Value`], without a JSON text in between.
//!
//! Parsing JSON into a regorus value is most of a small decision's cost (a CreateContainer input
//! took longer to encode and re-parse than the simplest policy took to decide it), so the engine
//! builds the value from the input's `Serialize` impl directly. The value is exactly what
//! `Value::from_json_str(&serde_json::to_string(input))` gives, and the serializer counts the
//! length that JSON text would have, so the input size limit still applies to the same number and
//! an oversized input stops being built as soon as it crosses the limit.

use std::collections::BTreeMap;
use std::fmt;

use regorus::Value;
use serde::ser::{self, Serialize};

/// Why an input could not be converted.
#[derive(Debug)]
pub(crate) enum ToValueError {
    /// The compact JSON encoding would be longer than the limit.
    TooLarge,
    /// The input has a shape JSON cannot carry (e.g. a non-string map key, a non-finite float).
    Unsupported(String),
}

impl fmt::Display for ToValueError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TooLarge => f.write_str("input over the size limit"),
            Self::Unsupported(what) => f.write_str(what),
        }
    }
}

impl std::error::Error for ToValueError {}

impl ser::Error for ToValueError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        Self::Unsupported(msg.to_string())
    }
}

/// Converts `value`; `Ok((value, json_len))`, or [`ToValueError::TooLarge`] once the JSON length
/// passes `limit`.
pub(crate) fn to_value<T: Serialize + ?Sized>(
    value: &T,
    limit: usize,
) -> Result<(Value, usize), ToValueError> {
    let mut serializer = Serializer { len: 0, limit };
    let value = value.serialize(&mut serializer)?;
    Ok((value, serializer.len))
}

struct Serializer {
    /// Length so far of the compact JSON encoding.
    len: usize,
    limit: usize,
}

impl Serializer {
    fn count(&mut self, n: usize) -> Result<(), ToValueError> {
        self.len = self.len.saturating_add(n);
        if self.len > self.limit {
            return Err(ToValueError::TooLarge);
        }
        Ok(())
    }

    fn count_str(&mut self, s: &str) -> Result<(), ToValueError> {
        // serde_json escapes `"`, `\` and control characters; \b \f \n \r \t take two bytes, the
        // other control characters six (\u00XX).
        let escapes: usize = s
            .bytes()
            .map(|b| match b {
                b'"' | b'\\' | 0x08 | 0x0c | b'\n' | b'\r' | b'\t' => 1,
                0..=0x1f => 5,
                _ => 0,
            })
            .sum();
        self.count(s.len() + escapes + 2)
    }

    fn number(&mut self, value: Value, text_len: usize) -> Result<Value, ToValueError> {
        self.count(text_len)?;
        Ok(value)
    }
}

fn digits(mut n: u64) -> usize {
    let mut len = 1;
    while n >= 10 {
        n /= 10;
        len += 1;
    }
    len
}

fn signed_digits(n: i64) -> usize {
    digits(n.unsigned_abs()) + usize::from(n < 0)
}

impl<'a> ser::Serializer for &'a mut Serializer {
    type Ok = Value;
    type Error = ToValueError;
    type SerializeSeq = Seq<'a>;
    type SerializeTuple = Seq<'a>;
    type SerializeTupleStruct = Seq<'a>;
    type SerializeTupleVariant = Variant<Seq<'a>>;
    type SerializeMap = Map<'a>;
    type SerializeStruct = Map<'a>;
    type SerializeStructVariant = Variant<Map<'a>>;

    fn serialize_bool(self, v: bool) -> Result<Value, ToValueError> {
        self.count(if v { 4 } else { 5 })?;
        Ok(Value::from(v))
    }

    fn serialize_i8(self, v: i8) -> Result<Value, ToValueError> {
        self.serialize_i64(v.into())
    }

    fn serialize_i16(self, v: i16) -> Result<Value, ToValueError> {
        self.serialize_i64(v.into())
    }

    fn serialize_i32(self, v: i32) -> Result<Value, ToValueError> {
        self.serialize_i64(v.into())
    }

    fn serialize_i64(self, v: i64) -> Result<Value, ToValueError> {
        self.number(Value::from(v), signed_digits(v))
    }

    fn serialize_u8(self, v: u8) -> Result<Value, ToValueError> {
        self.serialize_u64(v.into())
    }

    fn serialize_u16(self, v: u16) -> Result<Value, ToValueError> {
        self.serialize_u64(v.into())
    }

    fn serialize_u32(self, v: u32) -> Result<Value, ToValueError> {
        self.serialize_u64(v.into())
    }

    fn serialize_u64(self, v: u64) -> Result<Value, ToValueError> {
        self.number(Value::from(v), digits(v))
    }

    fn serialize_f32(self, v: f32) -> Result<Value, ToValueError> {
        self.serialize_f64(v.into())
    }

    fn serialize_f64(self, v: f64) -> Result<Value, ToValueError> {
        if !v.is_finite() {
            return Err(ToValueError::Unsupported(format!("non-finite number {v}")));
        }
        let text =
            serde_json::to_string(&v).map_err(|e| ToValueError::Unsupported(e.to_string()))?;
        self.number(Value::from(v), text.len())
    }

    fn serialize_char(self, v: char) -> Result<Value, ToValueError> {
        self.serialize_str(v.encode_utf8(&mut [0; 4]))
    }

    fn serialize_str(self, v: &str) -> Result<Value, ToValueError> {
        self.count_str(v)?;
        Ok(Value::from(v))
    }

    fn serialize_bytes(self, v: &[u8]) -> Result<Value, ToValueError> {
        use ser::SerializeSeq;
        let mut seq = self.serialize_seq(Some(v.len()))?;
        for byte in v {
            seq.serialize_element(byte)?;
        }
        seq.end()
    }

    fn serialize_none(self) -> Result<Value, ToValueError> {
        self.serialize_unit()
    }

    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Result<Value, ToValueError> {
        value.serialize(self)
    }

    fn serialize_unit(self) -> Result<Value, ToValueError> {
        self.count(4)?;
        Ok(Value::Null)
    }

    fn serialize_unit_struct(self, _name: &'static str) -> Result<Value, ToValueError> {
        self.serialize_unit()
    }

    fn serialize_unit_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
    ) -> Result<Value, ToValueError> {
        self.serialize_str(variant)
    }

    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        value: &T,
    ) -> Result<Value, ToValueError> {
        value.serialize(self)
    }

    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        value: &T,
    ) -> Result<Value, ToValueError> {
        // {"variant":value}
        self.count_str(variant)?;
        self.count(3)?;
        let inner = value.serialize(&mut *self)?;
        Ok(Value::from(BTreeMap::from([(Value::from(variant), inner)])))
    }

    fn serialize_seq(self, len: Option<usize>) -> Result<Seq<'a>, ToValueError> {
        self.count(2)?;
        Ok(Seq {
            serializer: self,
            items: Vec::with_capacity(len.unwrap_or(0)),
        })
    }

    fn serialize_tuple(self, len: usize) -> Result<Seq<'a>, ToValueError> {
        self.serialize_seq(Some(len))
    }

    fn serialize_tuple_struct(
        self,
        _name: &'static str,
        len: usize,
    ) -> Result<Seq<'a>, ToValueError> {
        self.serialize_seq(Some(len))
    }

    fn serialize_tuple_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        len: usize,
    ) -> Result<Variant<Seq<'a>>, ToValueError> {
        self.count_str(variant)?;
        self.count(3)?;
        Ok(Variant {
            variant,
            inner: self.serialize_seq(Some(len))?,
        })
    }

    fn serialize_map(self, _len: Option<usize>) -> Result<Map<'a>, ToValueError> {
        self.count(2)?;
        Ok(Map {
            serializer: self,
            entries: BTreeMap::new(),
            key: None,
        })
    }

    fn serialize_struct(self, _name: &'static str, len: usize) -> Result<Map<'a>, ToValueError> {
        self.serialize_map(Some(len))
    }

    fn serialize_struct_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        len: usize,
    ) -> Result<Variant<Map<'a>>, ToValueError> {
        self.count_str(variant)?;
        self.count(3)?;
        Ok(Variant {
            variant,
            inner: self.serialize_map(Some(len))?,
        })
    }
}

pub(crate) struct Seq<'a> {
    serializer: &'a mut Serializer,
    items: Vec<Value>,
}

impl Seq<'_> {
    fn push<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), ToValueError> {
        if !self.items.is_empty() {
            self.serializer.count(1)?;
        }
        let value = value.serialize(&mut *self.serializer)?;
        self.items.push(value);
        Ok(())
    }
}

impl ser::SerializeSeq for Seq<'_> {
    type Ok = Value;
    type Error = ToValueError;

    fn serialize_element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), ToValueError> {
        self.push(value)
    }

    fn end(self) -> Result<Value, ToValueError> {
        Ok(Value::from(self.items))
    }
}

impl ser::SerializeTuple for Seq<'_> {
    type Ok = Value;
    type Error = ToValueError;

    fn serialize_element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), ToValueError> {
        self.push(value)
    }

    fn end(self) -> Result<Value, ToValueError> {
        Ok(Value::from(self.items))
    }
}

impl ser::SerializeTupleStruct for Seq<'_> {
    type Ok = Value;
    type Error = ToValueError;

    fn serialize_field<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), ToValueError> {
        self.push(value)
    }

    fn end(self) -> Result<Value, ToValueError> {
        Ok(Value::from(self.items))
    }
}

pub(crate) struct Map<'a> {
    serializer: &'a mut Serializer,
    entries: BTreeMap<Value, Value>,
    key: Option<Value>,
}

impl Map<'_> {
    fn insert(&mut self, key: Value, value: Value) {
        self.entries.insert(key, value);
    }

    fn separator_and_key(&mut self, key: &str) -> Result<Value, ToValueError> {
        if !self.entries.is_empty() {
            self.serializer.count(1)?;
        }
        self.serializer.count_str(key)?;
        self.serializer.count(1)?;
        Ok(Value::from(key))
    }
}

impl ser::SerializeMap for Map<'_> {
    type Ok = Value;
    type Error = ToValueError;

    fn serialize_key<T: Serialize + ?Sized>(&mut self, key: &T) -> Result<(), ToValueError> {
        let key = key.serialize(KeySerializer)?;
        self.key = Some(self.separator_and_key(&key)?);
        Ok(())
    }

    fn serialize_value<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), ToValueError> {
        let key = self
            .key
            .take()
            .ok_or_else(|| ToValueError::Unsupported("map value without a key".into()))?;
        let value = value.serialize(&mut *self.serializer)?;
        self.insert(key, value);
        Ok(())
    }

    fn end(self) -> Result<Value, ToValueError> {
        Ok(Value::from(self.entries))
    }
}

impl ser::SerializeStruct for Map<'_> {
    type Ok = Value;
    type Error = ToValueError;

    fn serialize_field<T: Serialize + ?Sized>(
        &mut self,
        key: &'static str,
        value: &T,
    ) -> Result<(), ToValueError> {
        let key = self.separator_and_key(key)?;
        let value = value.serialize(&mut *self.serializer)?;
        self.insert(key, value);
        Ok(())
    }

    fn end(self) -> Result<Value, ToValueError> {
        Ok(Value::from(self.entries))
    }
}

/// A tuple or struct variant: `{"variant": [...] | {...}}`.
pub(crate) struct Variant<T> {
    variant: &'static str,
    inner: T,
}

impl ser::SerializeTupleVariant for Variant<Seq<'_>> {
    type Ok = Value;
    type Error = ToValueError;

    fn serialize_field<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), ToValueError> {
        self.inner.push(value)
    }

    fn end(self) -> Result<Value, ToValueError> {
        let inner = Value::from(self.inner.items);
        Ok(Value::from(BTreeMap::from([(
            Value::from(self.variant),
            inner,
        )])))
    }
}

impl ser::SerializeStructVariant for Variant<Map<'_>> {
    type Ok = Value;
    type Error = ToValueError;

    fn serialize_field<T: Serialize + ?Sized>(
        &mut self,
        key: &'static str,
        value: &T,
    ) -> Result<(), ToValueError> {
        ser::SerializeStruct::serialize_field(&mut self.inner, key, value)
    }

    fn end(self) -> Result<Value, ToValueError> {
        let inner = Value::from(self.inner.entries);
        Ok(Value::from(BTreeMap::from([(
            Value::from(self.variant),
            inner,
        )])))
    }
}

/// Map keys must be strings, as in JSON.
struct KeySerializer;

impl ser::Serializer for KeySerializer {
    type Ok = String;
    type Error = ToValueError;
    type SerializeSeq = ser::Impossible<String, ToValueError>;
    type SerializeTuple = ser::Impossible<String, ToValueError>;
    type SerializeTupleStruct = ser::Impossible<String, ToValueError>;
    type SerializeTupleVariant = ser::Impossible<String, ToValueError>;
    type SerializeMap = ser::Impossible<String, ToValueError>;
    type SerializeStruct = ser::Impossible<String, ToValueError>;
    type SerializeStructVariant = ser::Impossible<String, ToValueError>;

    fn serialize_str(self, v: &str) -> Result<String, ToValueError> {
        Ok(v.to_owned())
    }

    fn serialize_unit_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
    ) -> Result<String, ToValueError> {
        Ok(variant.to_owned())
    }

    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        value: &T,
    ) -> Result<String, ToValueError> {
        value.serialize(self)
    }

    fn serialize_bool(self, _v: bool) -> Result<String, ToValueError> {
        Err(key_error())
    }
    fn serialize_i8(self, _v: i8) -> Result<String, ToValueError> {
        Err(key_error())
    }
    fn serialize_i16(self, _v: i16) -> Result<String, ToValueError> {
        Err(key_error())
    }
    fn serialize_i32(self, _v: i32) -> Result<String, ToValueError> {
        Err(key_error())
    }
    fn serialize_i64(self, _v: i64) -> Result<String, ToValueError> {
        Err(key_error())
    }
    fn serialize_u8(self, _v: u8) -> Result<String, ToValueError> {
        Err(key_error())
    }
    fn serialize_u16(self, _v: u16) -> Result<String, ToValueError> {
        Err(key_error())
    }
    fn serialize_u32(self, _v: u32) -> Result<String, ToValueError> {
        Err(key_error())
    }
    fn serialize_u64(self, _v: u64) -> Result<String, ToValueError> {
        Err(key_error())
    }
    fn serialize_f32(self, _v: f32) -> Result<String, ToValueError> {
        Err(key_error())
    }
    fn serialize_f64(self, _v: f64) -> Result<String, ToValueError> {
        Err(key_error())
    }
    fn serialize_char(self, v: char) -> Result<String, ToValueError> {
        Ok(v.to_string())
    }
    fn serialize_bytes(self, _v: &[u8]) -> Result<String, ToValueError> {
        Err(key_error())
    }
    fn serialize_none(self) -> Result<String, ToValueError> {
        Err(key_error())
    }
    fn serialize_some<T: Serialize + ?Sized>(self, _value: &T) -> Result<String, ToValueError> {
        Err(key_error())
    }
    fn serialize_unit(self) -> Result<String, ToValueError> {
        Err(key_error())
    }
    fn serialize_unit_struct(self, _name: &'static str) -> Result<String, ToValueError> {
        Err(key_error())
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        _index: u32,
        _variant: &'static str,
        _value: &T,
    ) -> Result<String, ToValueError> {
        Err(key_error())
    }
    fn serialize_seq(self, _len: Option<usize>) -> Result<Self::SerializeSeq, ToValueError> {
        Err(key_error())
    }
    fn serialize_tuple(self, _len: usize) -> Result<Self::SerializeTuple, ToValueError> {
        Err(key_error())
    }
    fn serialize_tuple_struct(
        self,
        _name: &'static str,
        _len: usize,
    ) -> Result<Self::SerializeTupleStruct, ToValueError> {
        Err(key_error())
    }
    fn serialize_tuple_variant(
        self,
        _name: &'static str,
        _index: u32,
        _variant: &'static str,
        _len: usize,
    ) -> Result<Self::SerializeTupleVariant, ToValueError> {
        Err(key_error())
    }
    fn serialize_map(self, _len: Option<usize>) -> Result<Self::SerializeMap, ToValueError> {
        Err(key_error())
    }
    fn serialize_struct(
        self,
        _name: &'static str,
        _len: usize,
    ) -> Result<Self::SerializeStruct, ToValueError> {
        Err(key_error())
    }
    fn serialize_struct_variant(
        self,
        _name: &'static str,
        _index: u32,
        _variant: &'static str,
        _len: usize,
    ) -> Result<Self::SerializeStructVariant, ToValueError> {
        Err(key_error())
    }
}

fn key_error() -> ToValueError {
    ToValueError::Unsupported("map keys must be strings".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::input::{
        DnsConfig, HostEntry, NetworkInterface, NetworkRoute, PodNetwork, PolicyInput, Request,
        SandboxState,
    };

    fn sample() -> PolicyInput {
        let mut input = PolicyInput::new(
            Request::CreateSandbox {
                sandbox_id: "s\"\\\n\u{1}é".into(),
                hostname: None,
                registry_tunnels: vec!["127.0.0.1:5000->20000".into()],
                published_ports: vec!["30000->127.0.0.2:8443".into()],
                network: Some(PodNetwork {
                    interfaces: vec![NetworkInterface {
                        name: "eth0".into(),
                        mac: "02:42:ac:11:00:05".into(),
                        mtu: 1500,
                        addresses: vec!["192.0.2.5/24".into(), "2001:db8::5/64".into()],
                    }],
                    routes: vec![NetworkRoute {
                        destination: "0.0.0.0/0".into(),
                        gateway: Some("192.0.2.1".into()),
                        device: "eth0".into(),
                        source: None,
                        metric: 4_294_967_295,
                    }],
                    dns: DnsConfig {
                        servers: vec!["192.0.2.53".into()],
                        searches: vec![],
                        options: vec!["ndots:5".into()],
                    },
                    hosts: vec![HostEntry {
                        ip: "192.0.2.99".into(),
                        names: vec!["db".into()],
                    }],
                }),
            },
            SandboxState::default(),
        );
        input.version = 1;
        input
    }

    /// The value and length equal those of the JSON round trip the engine used before.
    #[test]
    fn matches_the_json_round_trip() {
        let input = sample();
        let json = serde_json::to_string(&input).unwrap();
        let (value, len) = to_value(&input, usize::MAX).unwrap();
        assert_eq!(value, Value::from_json_str(&json).unwrap());
        assert_eq!(len, json.len());
        for request in [
            Request::DestroySandbox,
            Request::ReadStdout {
                container_id: "c".into(),
                exec_id: Some("e".into()),
            },
        ] {
            let input = PolicyInput::new(request, SandboxState::default());
            let json = serde_json::to_string(&input).unwrap();
            let (value, len) = to_value(&input, usize::MAX).unwrap();
            assert_eq!(value, Value::from_json_str(&json).unwrap(), "{json}");
            assert_eq!(len, json.len(), "{json}");
        }
    }

    #[test]
    fn stops_at_the_limit() {
        let input = sample();
        let len = serde_json::to_string(&input).unwrap().len();
        assert!(to_value(&input, len).is_ok());
        assert!(matches!(
            to_value(&input, len - 1),
            Err(ToValueError::TooLarge)
        ));
    }
}
