//! `GET /dns` (each host's served generation and counters, `skiff dns
//! status`) and `GET /dns/query` (what a name gets, asked from a replica
//! or a host, with its service's policy: `skiff dns query`).

use std::net::{IpAddr, Ipv4Addr};

use axum::extract::rejection::QueryRejection;
use axum::extract::{Extension, Query, State};
use axum::routing::get;
use axum::{Json, Router};
use skiff_api_types::validate::{check_dns_name, parse_replica};
use skiff_api_types::*;
use skiff_shared::sections::dns::{Answer, QueryKind, Question, RecordData, Records};

use super::{Api, ApiError, ApiResult, Caller};

pub(super) fn routes() -> Router<Api> {
    Router::new()
        .route("/dns", get(dns))
        .route("/dns/query", get(query))
}

#[utoipa::path(get, path = "/api/v1/dns", responses((status = 200, body = DnsView)))]
pub(super) async fn dns(State(api): State<Api>) -> ApiResult<DnsView> {
    let Some(book) = &api.deployer.dns else {
        return Ok(Json(DnsView {
            enabled: false,
            generation: 0,
            hosts: Vec::new(),
        }));
    };
    let records = book.current();
    let names = crate::dns::node_infos(api.store.nodes(false).await?);
    let hosts = book
        .served()
        .into_iter()
        .map(|(id, s)| DnsHostView {
            node: names
                .get(&id)
                .map_or_else(|| id.clone(), |n| n.name.clone()),
            connected: api.sessions.get(&id).is_some(),
            node_id: id,
            generation: s.report.generation,
            listening: s.report.listening.iter().map(ToString::to_string).collect(),
            error: s.report.error,
            queries: s.report.stats.queries,
            forwarded: s.report.stats.forwarded,
            malformed: s.report.stats.malformed,
            rate_limited: s.report.stats.rate_limited,
            refused: s.report.stats.refused,
            reported_at: super::rfc3339_ms(i64::try_from(s.at_ms).unwrap_or(0)),
        })
        .collect();
    Ok(Json(DnsView {
        enabled: true,
        generation: records.generation,
        hosts,
    }))
}

/// Query of `GET /dns/query`.
#[derive(Debug, Clone, serde::Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct DnsQuery {
    /// The name asked, as a container would (`web`, `web.shop.skiff`,
    /// `tasks.web`, `_80._tcp.web.shop.skiff`, `NODE.nodes.skiff`).
    pub name: String,
    /// The replica asking, `STACK.SERVICE.N`; none: the host of the first
    /// node by name.
    pub from: Option<String>,
    /// `A` (default) or `SRV`.
    #[serde(rename = "type")]
    pub kind: Option<String>,
}

#[utoipa::path(get, path = "/api/v1/dns/query", params(DnsQuery),
    responses((status = 200, body = DnsQueryView), (status = 400, body = ApiErrorBody)))]
pub(super) async fn query(
    State(api): State<Api>,
    Extension(caller): Extension<Caller>,
    query: Result<Query<DnsQuery>, QueryRejection>,
) -> ApiResult<DnsQueryView> {
    let Query(q) = query.map_err(|e| ApiError::bad_request("invalid_request", e.body_text()))?;
    check_dns_name(&q.name).map_err(|m| ApiError::bad_request("invalid_name", m))?;
    let kind = match q.kind.as_deref().map(str::to_ascii_uppercase).as_deref() {
        None | Some("A") => QueryKind::A,
        Some("SRV") => QueryKind::Srv,
        Some(other) => {
            return Err(ApiError::bad_request(
                "invalid_type",
                format!("unknown record type {other:?}: use A or SRV"),
            ));
        }
    };
    let from = q
        .from
        .as_deref()
        .map(parse_replica)
        .transpose()
        .map_err(|m| ApiError::bad_request("invalid_from", m))?;
    if !caller.stacks.is_empty() && from.as_ref().is_none_or(|(s, _, _)| !caller.covers(s)) {
        return Err(ApiError::bad_request(
            "invalid_from",
            "this token is limited to some stacks: ask from a replica of one of them (--from STACK.SERVICE.N)",
        ));
    }
    let Some(book) = &api.deployer.dns else {
        return Err(ApiError::bad_request(
            "dns_off",
            "DNS runs with the cluster network, which is off ([network] enabled = false)",
        ));
    };
    let records = book.current();
    // Who asks: the replica's node and first address, or a host.
    let (node_name, source): (String, IpAddr) = match &from {
        Some((stack, service, slot)) => {
            let replica = records
                .content
                .services
                .iter()
                .filter(|s| s.stack == *stack && s.service == *service)
                .flat_map(|s| &s.replicas)
                .filter(|r| r.slot == *slot && !r.addresses.is_empty())
                .max_by_key(|r| (r.published, r.release))
                .ok_or_else(|| {
                    ApiError::bad_request(
                        "invalid_from",
                        format!(
                            "no replica {stack}.{service}.{slot} with an address: see `skiff stack tasks {stack}`"
                        ),
                    )
                })?;
            let ip = replica
                .addresses
                .first()
                .map_or(Ipv4Addr::UNSPECIFIED, |a| a.ip);
            (replica.node.clone(), IpAddr::V4(ip))
        }
        None => {
            let first = records.nodes.values().map(|n| n.name.clone()).min();
            (first.unwrap_or_default(), IpAddr::V4(Ipv4Addr::LOCALHOST))
        }
    };
    let node_id = records
        .nodes
        .iter()
        .find(|(_, n)| n.name == node_name)
        .map(|(id, _)| id.clone())
        .unwrap_or_default();
    let section = crate::dns::section(&records, &node_id, Vec::new());
    let resolver = Records::new(&section);
    let answer = resolver.answer(
        &Question {
            name: &q.name,
            kind,
        },
        source,
        0,
    );
    let (outcome, list) = match answer {
        Answer::Records(r) => ("records", r),
        Answer::NoData { .. } => ("nodata", Vec::new()),
        Answer::NxDomain => ("nxdomain", Vec::new()),
        Answer::Forward => ("forward", Vec::new()),
        Answer::Refused => ("refused", Vec::new()),
    };
    Ok(Json(DnsQueryView {
        name: q.name.clone(),
        kind: if kind == QueryKind::Srv { "SRV" } else { "A" }.to_owned(),
        from: q.from.clone(),
        node: node_name,
        generation: records.generation,
        outcome: outcome.to_owned(),
        records: list
            .into_iter()
            .map(|r| match r.data {
                RecordData::A(ip) => DnsRecordView {
                    name: r.name.to_string(),
                    ttl: r.ttl,
                    kind: "A".into(),
                    data: ip.to_string(),
                    address: None,
                },
                RecordData::Srv {
                    priority,
                    weight,
                    port,
                    target,
                    address,
                } => DnsRecordView {
                    name: r.name.to_string(),
                    ttl: r.ttl,
                    kind: "SRV".into(),
                    data: format!("{priority} {weight} {port} {target}"),
                    address: Some(address.to_string()),
                },
            })
            .collect(),
    }))
}
