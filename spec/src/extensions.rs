//! Top-level `x-*` keys: compose keeps them as free-form values and prints them with the
//! project, so `dcpp config` does too. Nothing in them is applied.

use std::collections::BTreeMap;

use serde_json::{Map, Number, Value};

use crate::yaml::{Kind, MergeTag, Node};

/// The top-level `x-*` entries of a merged file, as values. Keys elsewhere that merely start
/// with `x-` (a service called `x-foo`) are not extensions.
pub(crate) fn top_level(root: &Node<'_>) -> BTreeMap<String, Value> {
    root.as_map()
        .into_iter()
        .flatten()
        .filter(|e| e.key.starts_with("x-") && e.value.tag != Some(MergeTag::Reset))
        .map(|e| (e.key.to_string(), value(&e.value)))
        .collect()
}

pub(crate) fn value(n: &Node<'_>) -> Value {
    match &n.kind {
        Kind::Null => Value::Null,
        Kind::Scalar { value, plain: true } => plain_scalar(value),
        Kind::Scalar { value, .. } => Value::String(value.to_string()),
        Kind::Seq(items) => Value::Array(items.iter().map(value).collect()),
        Kind::Map(entries) => {
            let mut m = Map::new();
            for e in entries {
                if e.value.tag != Some(MergeTag::Reset) {
                    m.insert(e.key.to_string(), value(&e.value));
                }
            }
            Value::Object(m)
        }
    }
}

/// What compose's YAML decoder makes of an unquoted scalar that is not a string ("a number",
/// "a boolean", "null"); `None` for a string.
pub(crate) fn non_string(s: &str) -> Option<&'static str> {
    match plain_scalar(s) {
        Value::String(_) => None,
        Value::Null => Some("null"),
        Value::Bool(_) => Some("a boolean"),
        _ => Some("a number"),
    }
}

/// The type compose's YAML decoder gives an unquoted scalar: null, boolean, integer (decimal,
/// `0x`, `0o`, or `0`-prefixed octal, `_` separators allowed), float, else string. A float
/// without a fractional part prints as an integer, as compose's encoders write it.
fn plain_scalar(s: &str) -> Value {
    match s {
        "~" | "null" | "Null" | "NULL" => return Value::Null,
        "true" | "True" | "TRUE" => return Value::Bool(true),
        "false" | "False" | "FALSE" => return Value::Bool(false),
        _ => {}
    }
    let digits = s.replace('_', "");
    if let Some(i) = integer(&digits) {
        return Value::Number(i.into());
    }
    if is_float(&digits)
        && let Ok(f) = digits.parse::<f64>()
    {
        if f.fract() == 0.0 && f.abs() < 1e15 {
            // In range and integral, so the conversion is exact.
            return Value::Number((f as i64).into());
        }
        if let Some(n) = Number::from_f64(f) {
            return Value::Number(n);
        }
    }
    Value::String(s.to_owned())
}

fn integer(s: &str) -> Option<i64> {
    let (neg, body) = match s.as_bytes().first()? {
        b'-' => (true, &s[1..]),
        b'+' => (false, &s[1..]),
        _ => (false, s),
    };
    let (radix, digits) = if let Some(h) = body.strip_prefix("0x") {
        (16, h)
    } else if let Some(o) = body.strip_prefix("0o") {
        (8, o)
    } else if let Some(b) = body.strip_prefix("0b") {
        (2, b)
    } else if body.len() > 1 && body.starts_with('0') {
        (8, &body[1..])
    } else {
        (10, body)
    };
    if digits.is_empty() || !digits.chars().all(|c| c.is_digit(radix)) {
        return None;
    }
    let v = i64::from_str_radix(digits, radix).ok()?;
    Some(if neg { -v } else { v })
}

/// YAML's float syntax (without `.inf`/`.nan`, which JSON cannot hold; those stay strings).
fn is_float(s: &str) -> bool {
    let body = s.strip_prefix(['-', '+']).unwrap_or(s);
    let (mantissa, exp) = match body.find(['e', 'E']) {
        Some(i) => (&body[..i], Some(&body[i + 1..])),
        None => (body, None),
    };
    let (int, frac) = match mantissa.split_once('.') {
        Some((i, f)) => (i, Some(f)),
        None => (mantissa, None),
    };
    let all_digits = |t: &str| t.chars().all(|c| c.is_ascii_digit());
    let mantissa_ok = match frac {
        Some(f) => all_digits(int) && all_digits(f) && !(int.is_empty() && f.is_empty()),
        None => !int.is_empty() && all_digits(int),
    };
    let exp_ok = exp.is_none_or(|e| {
        let e = e.strip_prefix(['-', '+']).unwrap_or(e);
        !e.is_empty() && all_digits(e)
    });
    mantissa_ok && exp_ok
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_scalars_take_compose_types() {
        assert_eq!(plain_scalar("~"), Value::Null);
        assert_eq!(plain_scalar("True"), Value::Bool(true));
        assert_eq!(plain_scalar("yes"), Value::String("yes".into()));
        assert_eq!(plain_scalar("1_000"), Value::from(1000));
        assert_eq!(plain_scalar("0x1f"), Value::from(31));
        assert_eq!(plain_scalar("0755"), Value::from(493));
        assert_eq!(plain_scalar("-12"), Value::from(-12));
        assert_eq!(plain_scalar("1.5"), Value::from(1.5));
        assert_eq!(plain_scalar("2.0"), Value::from(2));
        assert_eq!(plain_scalar("1e3"), Value::from(1000));
        assert_eq!(plain_scalar(".5"), Value::from(0.5));
        assert_eq!(plain_scalar("1.2.3"), Value::String("1.2.3".into()));
        assert_eq!(plain_scalar(".inf"), Value::String(".inf".into()));
        assert_eq!(plain_scalar("08"), Value::from(8));
        assert_eq!(plain_scalar("e3"), Value::String("e3".into()));
    }
}
