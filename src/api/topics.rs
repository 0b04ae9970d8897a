//! Topic names under `{prefix}/{agent_id}` (`mqtt-api.md`: Topics).

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topics {
    root: String,
}

impl Topics {
    pub fn new(prefix: &str, agent_id: &str) -> Self {
        Topics { root: format!("{prefix}/{agent_id}") }
    }

    pub fn root(&self) -> &str {
        &self.root
    }
    pub fn cmd(&self) -> String {
        format!("{}/cmd", self.root)
    }
    pub fn result(&self) -> String {
        format!("{}/result", self.root)
    }
    pub fn evt(&self) -> String {
        format!("{}/evt", self.root)
    }
    pub fn status(&self) -> String {
        format!("{}/status", self.root)
    }
    pub fn telemetry(&self) -> String {
        format!("{}/telemetry", self.root)
    }
    pub fn terminal(&self, id: &str) -> String {
        format!("{}/terminals/{id}", self.root)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        let t = Topics::new("posbridge", "shop-042");
        assert_eq!(t.cmd(), "posbridge/shop-042/cmd");
        assert_eq!(t.terminal("ip-1"), "posbridge/shop-042/terminals/ip-1");
    }
}
