//! Just enough of Kubernetes' protobuf encoding to read the one body kubectl sends that way
//! to Rouse: `kubectl create namespace` (typed clients send core kinds as
//! `application/vnd.kubernetes.protobuf`). The envelope is the magic `k8s\0` and a
//! `runtime.Unknown` (1: typeMeta {1: apiVersion, 2: kind}, 2: raw); `raw` is the Namespace
//! (1: metadata {1: name, 2: generateName, 11: labels, 12: annotations}). Anything else in
//! it is skipped; answers stay JSON (the clients accept it).

use serde_json::{Map, Value, json};

/// The media type of Kubernetes' protobuf encoding.
pub const MEDIA_TYPE: &str = "application/vnd.kubernetes.protobuf";

const MAGIC: &[u8] = b"k8s\0";

/// A Namespace in protobuf, as the JSON object it stands for.
pub fn decode_namespace(bytes: &[u8]) -> Result<Value, String> {
    let envelope = bytes
        .strip_prefix(MAGIC)
        .ok_or("the protobuf body lacks the k8s envelope")?;
    let (mut api_version, mut kind, mut raw) = (String::new(), String::new(), &[][..]);
    for field in Fields(envelope) {
        match field? {
            (1, Wire::Bytes(type_meta)) => {
                for f in Fields(type_meta) {
                    match f? {
                        (1, Wire::Bytes(v)) => api_version = text(v)?,
                        (2, Wire::Bytes(v)) => kind = text(v)?,
                        _ => {}
                    }
                }
            }
            (2, Wire::Bytes(r)) => raw = r,
            _ => {}
        }
    }
    let mut meta = Map::new();
    for field in Fields(raw) {
        if let (1, Wire::Bytes(m)) = field? {
            for f in Fields(m) {
                match f? {
                    (1, Wire::Bytes(v)) => {
                        meta.insert("name".into(), json!(text(v)?));
                    }
                    (2, Wire::Bytes(v)) => {
                        meta.insert("generateName".into(), json!(text(v)?));
                    }
                    (n @ (11 | 12), Wire::Bytes(entry)) => {
                        let (k, v) = map_entry(entry)?;
                        let field = if n == 11 { "labels" } else { "annotations" };
                        meta.entry(field)
                            .or_insert_with(|| json!({}))
                            .as_object_mut()
                            .map(|m| m.insert(k, json!(v)));
                    }
                    _ => {}
                }
            }
        }
    }
    Ok(json!({"apiVersion": api_version, "kind": kind, "metadata": meta}))
}

fn text(bytes: &[u8]) -> Result<String, String> {
    String::from_utf8(bytes.to_vec()).map_err(|_| "a protobuf string is not UTF-8".to_string())
}

/// A map entry: 1 key, 2 value.
fn map_entry(entry: &[u8]) -> Result<(String, String), String> {
    let (mut k, mut v) = (String::new(), String::new());
    for f in Fields(entry) {
        match f? {
            (1, Wire::Bytes(b)) => k = text(b)?,
            (2, Wire::Bytes(b)) => v = text(b)?,
            _ => {}
        }
    }
    Ok((k, v))
}

/// A field's value by wire type (the fixed-width ones are skipped).
enum Wire<'a> {
    Varint,
    Bytes(&'a [u8]),
    Fixed,
}

/// The fields of one message, in order.
struct Fields<'a>(&'a [u8]);

impl<'a> Iterator for Fields<'a> {
    type Item = Result<(u64, Wire<'a>), String>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.0.is_empty() {
            return None;
        }
        Some(self.field())
    }
}

impl<'a> Fields<'a> {
    fn field(&mut self) -> Result<(u64, Wire<'a>), String> {
        let key = self.varint()?;
        let wire = match key & 7 {
            0 => {
                self.varint()?;
                Wire::Varint
            }
            1 => {
                self.take(8)?;
                Wire::Fixed
            }
            2 => {
                let len = usize::try_from(self.varint()?).map_err(|_| "length overflows")?;
                Wire::Bytes(self.take(len)?)
            }
            5 => {
                self.take(4)?;
                Wire::Fixed
            }
            other => {
                self.0 = &[];
                return Err(format!("unsupported protobuf wire type {other}"));
            }
        };
        Ok((key >> 3, wire))
    }

    fn varint(&mut self) -> Result<u64, String> {
        let mut value = 0u64;
        for i in 0..10 {
            let Some((&b, rest)) = self.0.split_first() else {
                break;
            };
            self.0 = rest;
            value |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(value);
            }
        }
        self.0 = &[];
        Err("truncated protobuf varint".into())
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if n > self.0.len() {
            self.0 = &[];
            return Err("truncated protobuf field".into());
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes_field(n: u8, v: &[u8]) -> Vec<u8> {
        let mut out = vec![(n << 3) | 2, v.len() as u8];
        out.extend_from_slice(v);
        out
    }

    #[test]
    fn reads_a_namespace_and_refuses_garbage() {
        let label = [bytes_field(1, b"team"), bytes_field(2, b"a")].concat();
        let meta = [
            bytes_field(1, b"demo"),
            vec![(4 << 3), 0x96, 0x01], // a varint field to skip (generation: 150)
            bytes_field(11, &label),
        ]
        .concat();
        let raw = [bytes_field(1, &meta), bytes_field(2, b"")].concat();
        let type_meta = [bytes_field(1, b"v1"), bytes_field(2, b"Namespace")].concat();
        let body = [MAGIC, &bytes_field(1, &type_meta), &bytes_field(2, &raw)].concat();
        assert_eq!(
            decode_namespace(&body).unwrap(),
            json!({"apiVersion": "v1", "kind": "Namespace",
                   "metadata": {"name": "demo", "labels": {"team": "a"}}})
        );
        assert!(decode_namespace(b"{}").is_err());
        let truncated = [MAGIC, &[0x0a, 0x7f, 0x01][..]].concat();
        assert!(decode_namespace(&truncated).is_err());
        let bad_wire = [MAGIC, &[0x0b][..]].concat();
        assert!(decode_namespace(&bad_wire).is_err());
    }
}
