//! `GET /routes`: the ingress (`skiff route ls`).

use std::collections::BTreeMap;

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use skiff_api_types::*;
use skiff_shared::sections::dns::Protocol;
use skiff_shared::sections::ingress::{PortStats, RouteStats};

use super::{Api, ApiResult};

pub(super) fn routes() -> Router<Api> {
    Router::new().route("/routes", get(list))
}

impl Api {
    /// The id of the certificate served for `domain`, if one covers it.
    fn certificate_for(&self, domain: &str) -> Option<String> {
        let certs = self.certs.refs();
        let covers = |c: &&skiff_shared::sections::ingress::CertificateRef, wild: bool| {
            c.domains.iter().any(|d| {
                d == domain || (wild && skiff_shared::sections::ingress::domain_matches(d, domain))
            })
        };
        certs
            .iter()
            .find(|c| covers(c, false))
            .or_else(|| certs.iter().find(|c| covers(c, true)))
            .map(|c| c.id.clone())
    }
}

fn protocol(p: Protocol) -> &'static str {
    match p {
        Protocol::Tcp => "tcp",
        Protocol::Udp => "udp",
    }
}

#[utoipa::path(get, path = "/api/v1/routes", responses((status = 200, body = IngressView)))]
pub(super) async fn list(State(api): State<Api>) -> ApiResult<IngressView> {
    let Some(book) = &api.deployer.dns else {
        return Ok(Json(IngressView {
            enabled: false,
            generation: 0,
            ports: Vec::new(),
            routes: Vec::new(),
            edges: Vec::new(),
        }));
    };
    let records = book.current();
    let services = book.ingress();
    let served = book.ingress_served();
    let endpoints: BTreeMap<(&str, &str), usize> = records
        .content
        .services
        .iter()
        .map(|s| {
            let n = s
                .replicas
                .iter()
                .filter(|r| r.published && !r.addresses.is_empty())
                .count();
            ((s.stack.as_str(), s.service.as_str()), n)
        })
        .collect();
    // Counters summed over the hosts' reports.
    let mut port_stats: BTreeMap<(u16, Protocol), PortStats> = BTreeMap::new();
    let mut route_stats: BTreeMap<(String, String), RouteStats> = BTreeMap::new();
    for s in served.values() {
        for p in &s.report.ports {
            let e = port_stats.entry((p.port, p.protocol)).or_default();
            e.connections += p.connections;
            e.failed += p.failed;
        }
        for r in &s.report.routes {
            let e = route_stats
                .entry((r.domain.clone(), r.path.clone()))
                .or_default();
            e.requests += r.requests;
            e.failed += r.failed;
            for (a, b) in e.statuses.iter_mut().zip(r.statuses) {
                *a += b;
            }
        }
    }
    let mut ports = Vec::new();
    let mut routes = Vec::new();
    for ((stack, service), s) in &services {
        let n = endpoints
            .get(&(stack.as_str(), service.as_str()))
            .copied()
            .unwrap_or(0);
        for p in &s.ports {
            let st = port_stats
                .get(&(p.published, p.protocol))
                .cloned()
                .unwrap_or_default();
            ports.push(PublishedPortView {
                port: p.published,
                protocol: protocol(p.protocol).to_owned(),
                stack: stack.clone(),
                service: service.clone(),
                target: p.target,
                endpoints: n,
                connections: st.connections,
                failed: st.failed,
            });
        }
        for r in &s.routes {
            let st = route_stats
                .get(&(r.domain.clone(), r.path.clone()))
                .cloned()
                .unwrap_or_default();
            routes.push(RouteView {
                domain: r.domain.clone(),
                path: r.path.clone(),
                stack: stack.clone(),
                service: service.clone(),
                port: r.port,
                tls: r.tls.as_str().to_owned(),
                balance: r.balance.as_str().to_owned(),
                local_first: r.local_first,
                endpoints: n,
                certificate: api.certificate_for(&r.domain),
                requests: st.requests,
                statuses: st.statuses,
                failed: st.failed,
            });
        }
    }
    ports.sort_by_key(|p| (p.port, p.protocol.clone()));
    routes.sort_by(|a, b| (&a.domain, &a.path).cmp(&(&b.domain, &b.path)));
    let edges = served
        .into_iter()
        .map(|(id, s)| {
            let info = records.nodes.get(&id).cloned().unwrap_or_default();
            EdgeView {
                node: if info.name.is_empty() {
                    id.clone()
                } else {
                    info.name
                },
                connected: api.sessions.get(&id).is_some(),
                edge: info.edge,
                node_id: id,
                generation: s.report.generation,
                listening: s
                    .report
                    .listeners
                    .iter()
                    .filter(|l| l.error.is_none())
                    .map(|l| format!("{}/{}", l.port, protocol(l.protocol)))
                    .collect(),
                problems: s
                    .report
                    .listeners
                    .iter()
                    .filter_map(|l| {
                        let e = l.error.as_ref()?;
                        Some(format!("{}/{}: {e}", l.port, protocol(l.protocol)))
                    })
                    .collect(),
                error: s.report.error,
                certificates: s.report.certificates.len(),
                reported_at: super::rfc3339_ms(i64::try_from(s.at_ms).unwrap_or(0)),
            }
        })
        .collect();
    Ok(Json(IngressView {
        enabled: true,
        generation: records.generation,
        ports,
        routes,
        edges,
    }))
}
