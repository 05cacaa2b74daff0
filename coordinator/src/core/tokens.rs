//! Issued user tokens: kept as hashes, issued and revoked durably.

use super::*;

impl Core {
    /// The tokens `liandan tokens add` issued (hashes only), by name.
    pub fn issued_tokens(&self) -> Vec<IssuedToken> {
        self.lock().tokens.values().cloned().collect()
    }

    /// Stores a newly issued token (its hash); refused if the name is taken.
    pub async fn issue_token(&self, t: IssuedToken) -> Result<IssuedToken, CoreError> {
        let pending = {
            let mut st = self.lock();
            if st.tokens.contains_key(&t.name) {
                return Err(CoreError::FailedPrecondition(format!(
                    "a token named {} exists; revoke it first (liandan tokens revoke {})",
                    t.name, t.name
                )));
            }
            st.tokens.insert(t.name.clone(), t.clone());
            self.enqueue(Effects::of(Op::PutToken {
                name: t.name.clone(),
                role: if t.admin { "admin" } else { "user" }.into(),
                hash: t.hash.clone(),
                created_at: t.created_at,
            }))
        };
        self.finish(pending).await?;
        Ok(t)
    }

    /// Removes an issued token: it is refused from then on.
    pub async fn revoke_token(&self, name: &str) -> Result<IssuedToken, CoreError> {
        let (pending, t) = {
            let mut st = self.lock();
            let t = st.tokens.remove(name).ok_or_else(|| CoreError::NotFound {
                kind: "token",
                id: name.chars().take(80).collect(),
                hint: "tokens list",
            })?;
            let op = Op::DeleteToken {
                name: name.to_string(),
            };
            (self.enqueue(Effects::of(op)), t)
        };
        self.finish(pending).await?;
        Ok(t)
    }
}
