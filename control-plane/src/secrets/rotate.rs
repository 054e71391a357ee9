//! Master-key rotation (`ferry-server rotate-master-key`): every stored secret (and every
//! webhook and callback signing secret) is opened with the current key and sealed with the new
//! one, in one transaction, so the database never holds
//! secrets under two keys. Run it with every `ferry-server` of the database stopped, then start
//! them with the new key (a server given the other key refuses to start).

use serde_json::json;

use super::crypto::{KEY_FILE, KeyError, MasterKey, associated_data};
use super::{OpenError, open};
use crate::config::{MasterKeySource, ServerConfig};
use crate::store::{Audit, Store, StoreError, StoreOptions};

#[derive(Debug, thiserror::Error)]
pub enum RotateError {
    #[error("current master key: {0}")]
    CurrentKey(KeyError),
    #[error("the new master key is the current one (key {0})")]
    SameKey(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(
        "secret rotation failed (ENV_004): cannot open {scope} secret {name} of {scope_id} with the current master key: \
         {source}; nothing was changed"
    )]
    Open { scope: &'static str, scope_id: String, name: String, source: OpenError },
}

/// What a rotation did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rotation {
    /// Secrets sealed again (those already under the new key are left as they are).
    pub resealed: usize,
    pub from: String,
    pub to: String,
}

/// Seals every secret of `config`'s database again under `new`. The current key is the one
/// `config` names (for the data-directory key, the existing `master.key`; none is generated).
pub async fn rotate_master_key(config: &ServerConfig, new: &MasterKey) -> Result<Rotation, RotateError> {
    let current = match &config.master_key {
        MasterKeySource::DataDir => MasterKey::read(&config.data_dir.join(KEY_FILE)),
        source => MasterKey::load(source, &config.data_dir),
    }
    .map_err(RotateError::CurrentKey)?;
    if current.id() == new.id() {
        return Err(RotateError::SameKey(new.id().to_string()));
    }
    let store = Store::connect(&config.database_url, StoreOptions::default()).await?;
    let audit = Audit::new(
        "operator:ferry-server rotate-master-key",
        "secrets.rotate_master_key",
        "master-key",
        crate::ids::random_id("req"),
        json!({ "from": current.id(), "to": new.id() }),
    )
    .with_object_type("secret");
    // Counted by both closures below.
    let resealed = std::cell::Cell::new(0);
    let outcome = store
        .reseal_secrets(
            |s| {
                // A rotation that ran before (the key was not switched yet) left these.
                if s.key_id == new.id() {
                    return Ok::<_, RotateError>((s.ciphertext.clone(), s.nonce.clone(), s.key_id.clone()));
                }
                let value = open(&current, s).map_err(|source| RotateError::Open {
                    scope: s.scope.as_str(),
                    scope_id: s.scope_id.clone(),
                    name: s.name.clone(),
                    source,
                })?;
                let sealed = new.seal(
                    &associated_data(s.scope.as_str(), &s.scope_id, &s.name, s.version),
                    value.expose().as_bytes(),
                );
                resealed.set(resealed.get() + 1);
                Ok((sealed.ciphertext, sealed.nonce, sealed.key_id))
            },
            // Webhook and callback signing secrets.
            |s| {
                if s.sealed.key_id == new.id() {
                    return Ok(s.sealed.clone());
                }
                let aad = crate::webhooks::secret_aad(s.kind, &s.id);
                let value = current.open(&s.sealed, &aad).map_err(|source| RotateError::Open {
                    scope: s.kind,
                    scope_id: s.id.clone(),
                    name: "signing secret".into(),
                    source,
                })?;
                resealed.set(resealed.get() + 1);
                Ok(new.seal(&aad, &value))
            },
            &audit,
        )
        .await;
    store.close().await;
    outcome??;
    let resealed = resealed.get();
    tracing::info!(resealed, from = %current.id(), to = %new.id(), "rotated the master key of secrets");
    Ok(Rotation { resealed, from: current.id().to_string(), to: new.id().to_string() })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{SecretRecord, SecretScope, SecretWrite};

    #[tokio::test]
    async fn rotation_reseals_everything_under_the_new_key_or_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let config = ServerConfig::for_tests(dir.path());
        let old = MasterKey::load(&config.master_key, dir.path()).unwrap();
        let store = Store::connect(&config.database_url, StoreOptions::default()).await.unwrap();
        store.seed_environments(0).await.unwrap();
        let row = |name: &str, version: i64, value: &str| {
            let sealed = old.seal(&associated_data("environment", "env-staging", name, version), value.as_bytes());
            SecretRecord {
                scope: SecretScope::Environment,
                scope_id: "env-staging".into(),
                name: name.into(),
                ciphertext: sealed.ciphertext,
                nonce: sealed.nonce,
                key_id: sealed.key_id,
                version,
                created_at: 1,
                updated_at: 2,
            }
        };
        let rows = vec![row("A", 2, "alpha"), row("B", 1, "beta")];
        let write = SecretWrite { upserts: rows, deletes: vec![], audit: None };
        store
            .write_secrets(SecretScope::Environment, "env-staging", |_| Ok::<_, ()>(Some(write)), |_, _, _, _| Ok(None))
            .await
            .unwrap()
            .unwrap();

        let (new, _) = MasterKey::generate();
        assert!(matches!(rotate_master_key(&config, &old).await, Err(RotateError::SameKey(_))));
        let done = rotate_master_key(&config, &new).await.unwrap();
        assert_eq!(done, Rotation { resealed: 2, from: old.id().into(), to: new.id().into() });
        let after = store.list_secrets(SecretScope::Environment, "env-staging").await.unwrap();
        assert_eq!(store.secret_key_ids().await.unwrap(), [new.id()]);
        assert_eq!(open(&new, &after[0]).unwrap().expose(), "alpha");
        assert_eq!(open(&new, &after[1]).unwrap().expose(), "beta");
        assert!(matches!(open(&old, &after[0]), Err(OpenError::WrongKey { .. })));
        assert_eq!((after[0].version, after[0].updated_at), (2, 2), "the values did not change");
        // Again before the key was switched: nothing left to do.
        assert_eq!(rotate_master_key(&config, &new).await.unwrap().resealed, 0);

        // A secret the current key cannot open stops the rotation before anything changes.
        let (third, _) = MasterKey::generate();
        let mut with_new = config.clone();
        with_new.master_key = MasterKeySource::Env(String::new());
        assert!(matches!(rotate_master_key(&with_new, &third).await, Err(RotateError::CurrentKey(_))));
        let e = rotate_master_key(&config, &third).await.unwrap_err();
        assert!(matches!(e, RotateError::Open { .. }) && e.to_string().contains("ENV_004"), "{e}");
        assert_eq!(store.secret_key_ids().await.unwrap(), [new.id()]);
        store.close().await;
    }
}
