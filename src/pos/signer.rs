//! Signed commands (`mqtt-api.md`: Signed commands) as a cloud POS sends them.

use std::collections::HashMap;

use serde_json::Value;

/// Signs commands the way a cloud POS must for an agent with `security.command_keys`
/// (`mqtt-api.md`: Signed commands): naming the agent, with a near deadline, sealed with
/// the cloud's P-256 key. A repeated id sends the very same envelope (a retry).
pub struct Signer {
    pub kid: String,
    pub key: p256::ecdsa::SigningKey,
    pub agent_id: String,
    /// Envelope and signed bytes by id.
    sent: HashMap<String, (Vec<u8>, Vec<u8>)>,
}

impl Signer {
    pub fn new(kid: &str, key: p256::ecdsa::SigningKey, agent_id: &str) -> Signer {
        Signer { kid: kid.into(), key, agent_id: agent_id.into(), sent: Default::default() }
    }

    /// The envelope for `payload`, and the command bytes it signs.
    pub fn seal(&mut self, payload: &[u8]) -> (Vec<u8>, Vec<u8>) {
        let mut inner = payload.to_vec();
        let mut id = None;
        if let Ok(Value::Object(mut o)) = serde_json::from_slice::<Value>(payload) {
            id = o.get("id").and_then(Value::as_str).map(str::to_string);
            if let Some(prev) = id.as_ref().and_then(|i| self.sent.get(i)) {
                return prev.clone();
            }
            o.entry("agent").or_insert_with(|| Value::String(self.agent_id.clone()));
            o.entry("expires_at").or_insert_with(|| {
                Value::String(crate::api::ts(chrono::Utc::now() + chrono::Duration::minutes(5)))
            });
            inner = Value::Object(o).to_string().into_bytes();
        }
        let env =
            crate::api::signature::seal(&inner, &self.kid, &self.key).to_string().into_bytes();
        if let Some(id) = id {
            self.sent.insert(id, (env.clone(), inner.clone()));
        }
        (env, inner)
    }
}
