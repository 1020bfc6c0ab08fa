//! The portal store as an operator meets it: `check-config` on `[portal]`,
//! and `sealgate portal revoke ID` on a message stored by the store.

use std::process::Command;

use sealgate::portal::store::{Deposit, Pickup, PortalStore};
use sealgate::queue::{QueueId, Spool, SpoolKey};

use crate::config_check::run_args as run;
use crate::gateway::BIN;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoke_destroys_a_stored_message_and_refuses_what_is_not_there() {
    let dir = tempfile::tempdir().unwrap();
    let keygen = |name: &str| {
        let path = dir.path().join(name);
        let out = Command::new(BIN)
            .args(["keygen", "--out"])
            .arg(&path)
            .output()
            .unwrap();
        assert!(out.status.success());
        path
    };
    let spool_key = keygen("spool.key");
    let master = keygen("portal.key");
    std::fs::write(
        dir.path().join("policy.toml"),
        "[defaults]\nmethods = [\"tls\"]\n",
    )
    .unwrap();
    let db = dir.path().join("audit.db");
    let config = dir.path().join("sealgate.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nhostname = \"gateway.example.test\"\nlisten = [\"127.0.0.1:0\"]\nspool_dir = \"spool\"\nspool_key_file = \"spool.key\"\n[audit]\ndatabase_url = \"sqlite://{}\"\n[policy]\nfiles = [\"policy.toml\"]\n[portal]\nlisten = \"127.0.0.1:0\"\npublic_url = \"http://127.0.0.1:8443\"\nmaster_key_file = \"portal.key\"\n",
            db.display()
        ),
    )
    .unwrap();
    let (ok, text) = run(&["check-config"], &config);
    assert!(ok, "{text}");
    // The spool key as the master key, and a master key file that is no
    // key: each refused with its key.
    let good = std::fs::read_to_string(&config).unwrap();
    let with_master = |file: &str| {
        good.replace(
            "master_key_file = \"portal.key\"",
            &format!("master_key_file = \"{file}\""),
        )
    };
    // The file itself, a copy of it, and a rotated file whose older key is
    // the spool's.
    std::fs::copy(&spool_key, dir.path().join("copy.key")).unwrap();
    let rotated = format!(
        "{}{}",
        std::fs::read_to_string(dir.path().join("portal.key")).unwrap(),
        std::fs::read_to_string(&spool_key).unwrap()
    );
    std::fs::write(dir.path().join("rotated.key"), rotated).unwrap();
    for shared in ["spool.key", "copy.key", "rotated.key"] {
        std::fs::write(&config, with_master(shared)).unwrap();
        let (ok, text) = run(&["check-config"], &config);
        assert!(
            !ok && text.contains("portal.master_key_file")
                && text.contains("holds a key of the spool key file"),
            "{shared}: {text}"
        );
    }
    std::fs::write(dir.path().join("broken.key"), "not a key\n").unwrap();
    std::fs::write(&config, with_master("broken.key")).unwrap();
    let (ok, text) = run(&["check-config"], &config);
    assert!(!ok && text.contains("portal.master_key_file"), "{text}");
    std::fs::write(&config, &good).unwrap();

    // A message stored as the daemon will store it.
    let spool = Spool::open(
        &dir.path().join("spool"),
        SpoolKey::load(&spool_key).unwrap(),
    )
    .unwrap();
    let id = QueueId::new();
    let mut w = spool.create_content(&id).await.unwrap();
    w.write(b"Subject: results\r\n\r\nMARKER-4412\r\n")
        .await
        .unwrap();
    w.finish().await.unwrap();
    let masters = SpoolKey::load(&master).unwrap().raw_keys().to_vec();
    let url = format!("sqlite://{}", db.display());
    let store = PortalStore::open(&url, masters, false).await.unwrap();
    let deposit = Deposit {
        queue_id: id.0.clone(),
        sender: "doctor@clinic.example.test".into(),
        recipient: "patient@mail.example.test".into(),
        expires_at: chrono::Utc::now() + chrono::Duration::days(30),
    };
    let stored = store
        .store(&deposit, spool.open_content(&id).await.unwrap())
        .await
        .unwrap();
    assert!(matches!(
        store.pickup(&stored.token).await.unwrap(),
        Pickup::Open(_)
    ));

    let (ok, text) = run(&["portal", "revoke", &stored.id], &config);
    assert!(ok, "{text}");
    assert!(text.contains("revoked"), "{text}");
    assert!(matches!(
        store.pickup(&stored.token).await.unwrap(),
        Pickup::Revoked
    ));
    // Twice, an unknown id, and no id at all: clear refusals.
    let (ok, text) = run(&["portal", "revoke", &stored.id], &config);
    assert!(!ok && text.contains("already revoked"), "{text}");
    let (ok, text) = run(&["portal", "revoke", &"0".repeat(32)], &config);
    assert!(!ok && text.contains("no readable portal message"), "{text}");
    let (ok, text) = run(&["portal", "revoke", "../etc"], &config);
    assert!(!ok && text.contains("not a portal message id"), "{text}");

    // Without [portal]: the command says so.
    let text_cfg = std::fs::read_to_string(&config).unwrap();
    let cut = text_cfg.find("[portal]").unwrap();
    std::fs::write(&config, &text_cfg[..cut]).unwrap();
    let (ok, text) = run(&["portal", "revoke", &stored.id], &config);
    assert!(!ok && text.contains("no [portal] section"), "{text}");
}
