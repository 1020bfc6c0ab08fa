//! Sessions for the connection probes (`probe::Dialer`): opened exactly as
//! delivery opens them, so what a probe sees is what delivery will get.

use std::net::SocketAddr;

use serde_json::json;

use super::Deliverer;
use super::client::Connection;
use crate::capability::TlsRequirement;
use crate::net::dane::Tlsa;
use crate::net::route::Hop;
use crate::net::tls::TlsEvidence;
use crate::probe::tls_offered::Offered;
use crate::probe::{BoxFuture, Dialer};

impl Deliverer {
    /// See `Dialer::starttls_offered`.
    async fn starttls_offered(&self, domain: &str) -> Offered {
        // A DNSSEC-signed MX set is taken as validated, as delivery takes
        // it: one forged answer from the plain resolver must not even get
        // a probe connection. Otherwise (unsigned, or no validating
        // resolver) the plain route, as before.
        let route = match self.validated_route_for(domain, true).await.ok() {
            Some(r) => r,
            None => match self.route_for(domain).await {
                Ok(r) => r,
                Err(e) => return Offered::NoRoute(e.to_string()),
            },
        };
        let kind = json!(route.kind);
        let mut failures = Vec::new();
        for hop in &route.hops {
            for addr in &hop.addrs {
                let mut conn = match Connection::connect(&hop.name, *addr, self.timeouts()).await {
                    Ok(Ok(c)) => c,
                    Ok(Err(greeting)) => {
                        failures.push(format!(
                            "{} [{}]: {}",
                            hop.name,
                            addr.ip(),
                            greeting.one_line()
                        ));
                        continue;
                    }
                    Err(e) => {
                        failures.push(e.to_string());
                        continue;
                    }
                };
                let answer = self.starttls_at(&mut conn, hop, *addr).await;
                tokio::spawn(conn.quit());
                return Offered::Checked {
                    route: kind,
                    answer,
                    failures,
                };
            }
        }
        Offered::Unreachable {
            route: kind,
            failures,
        }
    }

    /// EHLO, then STARTTLS with any certificate accepted, then what the
    /// session showed (the certificate checked for the host name).
    async fn starttls_at(
        &self,
        conn: &mut Connection,
        hop: &Hop,
        addr: SocketAddr,
    ) -> Result<serde_json::Value, String> {
        let (host, ip) = (&hop.name, addr.ip().to_string());
        let r = conn
            .ehlo(self.helo_name())
            .await
            .map_err(|e| e.to_string())?;
        if r.code != 250 || !conn.ext.starttls {
            return Ok(json!({ "host": host, "ip": ip, "starttls": false }));
        }
        match conn
            .starttls(self.tls_clients().opportunistic.clone(), host)
            .await
        {
            Ok(Ok(())) => {}
            Ok(Err(refused)) => {
                return Ok(
                    json!({ "host": host, "ip": ip, "starttls": true, "refused": refused.one_line() }),
                );
            }
            Err(e) => {
                return Ok(
                    json!({ "host": host, "ip": ip, "starttls": true, "handshake_error": e.to_string() }),
                );
            }
        }
        let facts = conn.tls.clone().unwrap_or_default();
        let ev = self.tls_evidence(&facts, host);
        Ok(json!({ "host": host, "ip": ip, "starttls": true, "tls": ev }))
    }
}

impl Dialer for Deliverer {
    fn starttls_offered<'a>(&'a self, domain: &'a str) -> BoxFuture<'a, Offered> {
        Box::pin(Deliverer::starttls_offered(self, domain))
    }

    fn smarthost(&self) -> Option<(&str, u16)> {
        Deliverer::smarthost(self)
    }

    fn smarthost_floor(&self) -> TlsRequirement {
        Deliverer::smarthost_floor(self)
    }

    fn smarthost_session<'a>(
        &'a self,
        tlsa: Option<&'a [Tlsa]>,
    ) -> BoxFuture<'a, Result<(String, Option<TlsEvidence>), String>> {
        Box::pin(self.check_smarthost(tlsa))
    }
}
