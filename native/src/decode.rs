//! The fields of a transcript line that accounting reads, decoded with serde_json.
//!
//! Values are visited (`deserialize_any`), so strings are unescaped and checked (a lone surrogate
//! is an error, as in msgspec) and numbers parsed (1e400 is an error, as in msgspec for a value it
//! builds), but nothing outside the named fields is kept. The other keys of the line and of its
//! `message` (the content: most of the bytes), which msgspec skips without building, are skipped
//! with `IgnoredAny` when `SKIP_FAST` is set, which the caller does only for a line with no `\ud…`
//! escape (whose surrogates msgspec would check) and too few brackets to nest 128 deep (where
//! serde_json's and msgspec's limits differ). A repeated key keeps its last value, as msgspec does.

use std::borrow::Cow;
use std::fmt;
use std::marker::PhantomData;

use serde::de::{self, Deserialize, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

/// A JSON value, reduced to what the rules look at.
#[derive(Debug, Default)]
pub enum Node<'a, T> {
    #[default]
    Absent,
    Null,
    Bool(bool),
    /// An integer literal that fits an i64 or u64 (a Python int; any larger one is not a count).
    Int(i128),
    Float(f64),
    Str(Cow<'a, str>),
    Array,
    /// Boxed: a `Record` holds nested objects, and moving them inline through serde's layers
    /// showed up as memmove in profiles.
    Object(Box<T>),
}

/// A value whose insides are not read.
pub type Value<'a> = Node<'a, ()>;

/// The keys of an object whose fields are read; any other key's value is only visited.
pub trait Fields<'de>: Default {
    fn read<A: MapAccess<'de>>(&mut self, key: &str, map: &mut A) -> Result<bool, A::Error>;

    /// Visit the value of a key that is not read.
    fn skip<A: MapAccess<'de>>(map: &mut A) -> Result<(), A::Error> {
        map.next_value::<Skip>().map(|_| ())
    }
}

/// Skip an unread key's value of the line or its message: without visiting it when `FAST`.
fn skip_unread<'de, A: MapAccess<'de>, const FAST: bool>(map: &mut A) -> Result<(), A::Error> {
    if FAST {
        map.next_value::<IgnoredAny>().map(|_| ())
    } else {
        map.next_value::<Skip>().map(|_| ())
    }
}

impl<'de> Fields<'de> for () {
    fn read<A: MapAccess<'de>>(&mut self, _key: &str, _map: &mut A) -> Result<bool, A::Error> {
        Ok(false)
    }
}

/// Visits a value (and all it holds) without keeping it.
pub struct Skip;

impl<'de> Deserialize<'de> for Skip {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer
            .deserialize_any(NodeVisitor::<()>(PhantomData))
            .map(|_| Skip)
    }
}

struct Key<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;
            fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
                formatter.write_str("a key")
            }
            fn visit_borrowed_str<E: de::Error>(self, value: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(value)))
            }
            fn visit_str<E: de::Error>(self, value: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(value.to_owned())))
            }
        }
        deserializer.deserialize_str(KeyVisitor)
    }
}

struct NodeVisitor<T>(PhantomData<T>);

impl<'de, T: Fields<'de>> Visitor<'de> for NodeVisitor<T> {
    type Value = Node<'de, T>;

    fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
        formatter.write_str("any JSON value")
    }
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Node::Null)
    }
    fn visit_bool<E: de::Error>(self, value: bool) -> Result<Self::Value, E> {
        Ok(Node::Bool(value))
    }
    fn visit_i64<E: de::Error>(self, value: i64) -> Result<Self::Value, E> {
        Ok(Node::Int(i128::from(value)))
    }
    fn visit_u64<E: de::Error>(self, value: u64) -> Result<Self::Value, E> {
        Ok(Node::Int(i128::from(value)))
    }
    fn visit_f64<E: de::Error>(self, value: f64) -> Result<Self::Value, E> {
        if value == 0.0 && value.is_sign_negative() {
            // serde_json reads `-0` (a Python int 0 to msgspec) as the float -0.0: the reference decides.
            return Err(E::custom("negative zero"));
        }
        Ok(Node::Float(value))
    }
    fn visit_borrowed_str<E: de::Error>(self, value: &'de str) -> Result<Self::Value, E> {
        Ok(Node::Str(Cow::Borrowed(value)))
    }
    fn visit_str<E: de::Error>(self, value: &str) -> Result<Self::Value, E> {
        Ok(Node::Str(Cow::Owned(value.to_owned())))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<Skip>()?.is_some() {}
        Ok(Node::Array)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut fields = T::default();
        while let Some(key) = map.next_key::<Key<'de>>()? {
            if !fields.read(&key.0, &mut map)? {
                T::skip(&mut map)?;
            }
        }
        Ok(Node::Object(Box::new(fields)))
    }
}

impl<'de, T: Fields<'de>> Deserialize<'de> for Node<'de, T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(NodeVisitor::<T>(PhantomData))
    }
}

macro_rules! fields {
    ($name:ident { $($field:ident : $type:ty = $json:literal),* $(,)? }) => {
        #[derive(Default)]
        pub struct $name<'a> {
            $(pub $field: $type,)*
        }
        impl<'de> Fields<'de> for $name<'de> {
            fn read<A: MapAccess<'de>>(&mut self, key: &str, map: &mut A) -> Result<bool, A::Error> {
                match key {
                    $($json => self.$field = map.next_value()?,)*
                    _ => return Ok(false),
                }
                Ok(true)
            }
        }
    };
}

fields!(Breakdown {
    ephemeral_5m_input_tokens: Value<'a> = "ephemeral_5m_input_tokens",
    ephemeral_1h_input_tokens: Value<'a> = "ephemeral_1h_input_tokens",
});

fields!(ServerTools {
    web_search_requests: Value<'a> = "web_search_requests",
});

fields!(Usage {
    input_tokens: Value<'a> = "input_tokens",
    output_tokens: Value<'a> = "output_tokens",
    cache_creation_input_tokens: Value<'a> = "cache_creation_input_tokens",
    cache_read_input_tokens: Value<'a> = "cache_read_input_tokens",
    cache_creation: Node<'a, Breakdown<'a>> = "cache_creation",
    server_tool_use: Node<'a, ServerTools<'a>> = "server_tool_use",
    speed: Value<'a> = "speed",
});

#[derive(Default)]
pub struct Message<'a, const FAST: bool> {
    pub id: Value<'a>,
    pub model: Value<'a>,
    pub usage: Node<'a, Usage<'a>>,
}

impl<'de, const FAST: bool> Fields<'de> for Message<'de, FAST> {
    fn read<A: MapAccess<'de>>(&mut self, key: &str, map: &mut A) -> Result<bool, A::Error> {
        match key {
            "id" => self.id = map.next_value()?,
            "model" => self.model = map.next_value()?,
            "usage" => self.usage = map.next_value()?,
            _ => return Ok(false),
        }
        Ok(true)
    }

    fn skip<A: MapAccess<'de>>(map: &mut A) -> Result<(), A::Error> {
        skip_unread::<A, FAST>(map)
    }
}

/// The top-level fields. `message_refused` is set when any `message` value was neither an object
/// nor null: msgspec's record type refuses the line then, and the reference reads it as a line
/// without usage (whatever a later `message` key holds).
#[derive(Default)]
pub struct Record<'a, const FAST: bool> {
    pub message: Node<'a, Message<'a, FAST>>,
    pub message_refused: bool,
    pub timestamp: Value<'a>,
    pub session_id: Value<'a>,
    pub request_id: Value<'a>,
    pub version: Value<'a>,
    pub cwd: Value<'a>,
    pub git_branch: Value<'a>,
    pub agent_id: Value<'a>,
    pub is_sidechain: Value<'a>,
    pub is_api_error: Value<'a>,
    pub cost_usd: Value<'a>,
    pub speed: Value<'a>,
}

impl<'de, const FAST: bool> Fields<'de> for Record<'de, FAST> {
    fn read<A: MapAccess<'de>>(&mut self, key: &str, map: &mut A) -> Result<bool, A::Error> {
        match key {
            "message" => {
                self.message = map.next_value()?;
                if !matches!(self.message, Node::Object(_) | Node::Null) {
                    self.message_refused = true;
                }
            }
            "timestamp" => self.timestamp = map.next_value()?,
            "sessionId" => self.session_id = map.next_value()?,
            "requestId" => self.request_id = map.next_value()?,
            "version" => self.version = map.next_value()?,
            "cwd" => self.cwd = map.next_value()?,
            "gitBranch" => self.git_branch = map.next_value()?,
            "agentId" => self.agent_id = map.next_value()?,
            "isSidechain" => self.is_sidechain = map.next_value()?,
            "isApiErrorMessage" => self.is_api_error = map.next_value()?,
            "costUSD" => self.cost_usd = map.next_value()?,
            "speed" => self.speed = map.next_value()?,
            _ => return Ok(false),
        }
        Ok(true)
    }

    fn skip<A: MapAccess<'de>>(map: &mut A) -> Result<(), A::Error> {
        skip_unread::<A, FAST>(map)
    }
}

/// A whole line, already checked to be UTF-8 (so serde_json does not check its strings again):
/// `Err` when serde_json refuses it (the caller then asks the reference).
pub fn line<const FAST: bool>(text: &str) -> Result<Node<'_, Record<'_, FAST>>, serde_json::Error> {
    let mut deserializer = serde_json::Deserializer::from_str(text);
    let node = Node::<Record<FAST>>::deserialize(&mut deserializer)?;
    deserializer.end()?;
    Ok(node)
}
