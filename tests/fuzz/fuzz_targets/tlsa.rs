//! TLSA handling (`sealgate::net::dane`): the SubjectPublicKeyInfo that
//! `spki` takes from webpki's trust anchor reading of a certificate, and
//! the matching of TLSA records against certificate bytes, as the DANE
//! verifier does at delivery.
//!
//! Input: usage, selector, matching type, length of the record data, the
//! record data, then the certificate bytes.
//!
//! Oracle: webpki's end-entity parse (the one rustls checks handshake
//! signatures with) for the SPKI of every certificate it accepts; ring for
//! the digests. A record must match exactly the certificate (or key) it
//! was made from, and a selector 1 record nothing `spki` cannot read.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rustls_pki_types::CertificateDer;
use sealgate::net::dane::{Tlsa, spki};

fn digest(matching: u8, data: &[u8]) -> Option<Vec<u8>> {
    match matching {
        0 => Some(data.to_vec()),
        1 => Some(
            ring::digest::digest(&ring::digest::SHA256, data)
                .as_ref()
                .to_vec(),
        ),
        2 => Some(
            ring::digest::digest(&ring::digest::SHA512, data)
                .as_ref()
                .to_vec(),
        ),
        _ => None,
    }
}

fuzz_target!(|input: &[u8]| {
    let [usage, selector, matching, len, rest @ ..] = input else {
        return;
    };
    let len = usize::from(*len).min(rest.len());
    let (data, cert) = rest.split_at(len);
    let record = Tlsa {
        usage: *usage,
        selector: *selector,
        matching: *matching,
        data: data.to_vec(),
    };
    let _ = record.usable();
    let _ = record.describe();

    let ours = spki(cert);
    if let Some(s) = &ours {
        assert_eq!(s.as_ref().first(), Some(&0x30), "SPKI is not a SEQUENCE");
    }
    let der = CertificateDer::from(cert);
    if let Ok(ee) = webpki::EndEntityCert::try_from(&der) {
        let theirs = ee.subject_public_key_info();
        assert_eq!(
            ours.as_ref().map(|s| s.as_ref()),
            Some(theirs.as_ref()),
            "SPKI differs from webpki's end-entity parse"
        );
    }

    let selected = match record.selector {
        0 => Some(cert),
        1 => ours.as_ref().map(|s| s.as_ref()),
        _ => None,
    };
    let want = selected.and_then(|s| digest(record.matching, s));
    assert_eq!(
        record.matches(cert),
        want.as_deref() == Some(data),
        "matches() disagrees for {}",
        record.describe()
    );
    // The record made from this certificate matches it.
    if let Some(want) = want {
        let made = Tlsa {
            data: want,
            ..record.clone()
        };
        assert!(
            made.matches(cert),
            "{} does not match its own certificate",
            made.describe()
        );
    }
});
