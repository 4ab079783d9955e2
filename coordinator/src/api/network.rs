//! `GET /network`: the cluster network (`skiff network ls|show`).

use std::collections::BTreeMap;

use axum::extract::{Extension, State};
use axum::routing::get;
use axum::{Json, Router};
use skiff_api_types::*;
use skiff_shared::workload::ContainerAddress;

use super::{Api, ApiResult, Caller};

pub(super) fn routes() -> Router<Api> {
    Router::new().route("/network", get(network))
}

/// A container's addresses as the API shows them.
pub(super) fn address_views(addresses: &[ContainerAddress]) -> Vec<AddressView> {
    addresses
        .iter()
        .map(|a| AddressView {
            network: a.network.clone(),
            address: a.address.clone(),
        })
        .collect()
}

#[utoipa::path(get, path = "/api/v1/network",
    responses((status = 200, body = NetworkView)))]
pub(super) async fn network(
    State(api): State<Api>,
    Extension(caller): Extension<Caller>,
) -> ApiResult<NetworkView> {
    let Some(network) = &api.deployer.network else {
        return Ok(Json(NetworkView {
            enabled: false,
            range: None,
            hosts_block: None,
            mesh: None,
            port: None,
            mtu: None,
            networks: Vec::new(),
            hosts: Vec::new(),
        }));
    };
    let names: BTreeMap<String, String> = api
        .store
        .nodes(false)
        .await?
        .into_iter()
        .map(|n| (n.id, n.name))
        .collect();
    let name_of = |id: &str| names.get(id).cloned().unwrap_or_else(|| id.to_owned());
    let settings = network.settings();
    let hosts = network.hosts();
    let endpoints: BTreeMap<String, Option<String>> = hosts
        .iter()
        .map(|h| (h.node_id.clone(), h.endpoint.clone()))
        .collect();
    Ok(Json(NetworkView {
        enabled: true,
        range: Some(settings.range.net.to_string()),
        hosts_block: Some(settings.range.hosts.to_string()),
        mesh: Some(settings.mesh.to_string()),
        port: Some(settings.port),
        mtu: Some(network.planned_mtu()),
        networks: network
            .networks()
            .into_iter()
            .filter(|n| caller.covers(&n.stack))
            .map(|n| StackNetworkView {
                id: n.id,
                subnet: n.subnet.to_string(),
                leases: n
                    .leases
                    .iter()
                    .map(|(node, subnets)| LeaseView {
                        node: name_of(node),
                        node_id: node.clone(),
                        subnets: subnets.iter().map(ToString::to_string).collect(),
                    })
                    .collect(),
                problems: n
                    .problems
                    .iter()
                    .map(|(node, error)| NetworkProblemView {
                        node: name_of(node),
                        node_id: node.clone(),
                        error: error.clone(),
                    })
                    .collect(),
                stack: n.stack,
                name: n.name,
            })
            .collect(),
        hosts: hosts
            .into_iter()
            .map(|h| {
                let report = h.report.unwrap_or_default();
                MeshHostView {
                    node: if h.name.is_empty() {
                        name_of(&h.node_id)
                    } else {
                        h.name
                    },
                    address: h.address.to_string(),
                    endpoint: h.endpoint,
                    public_key: h.public_key,
                    implementation: report.implementation.map(|i| i.as_str().to_owned()),
                    underlay_mtu: report.underlay_mtu,
                    error: report.error,
                    conflict: h.conflict,
                    firewall_error: h.firewall_error,
                    peers: report
                        .peers
                        .into_iter()
                        .map(|p| PeerView {
                            node: name_of(&p.node_id),
                            endpoint: endpoints.get(&p.node_id).cloned().flatten(),
                            node_id: p.node_id,
                            handshake_age_ms: p.handshake_age_ms,
                            rx_bytes: p.rx_bytes,
                            tx_bytes: p.tx_bytes,
                            error: p.error,
                        })
                        .collect(),
                    node_id: h.node_id,
                }
            })
            .collect(),
    }))
}
