//! TLS certificates for HTTP routes: a chain and its key go in, checked
//! on the way; the key never comes out. A renewal by ACME can be asked
//! for. Adding, removing and renewing need an admin token; reading, any.

use axum::Json;
use axum::Router;
use axum::extract::rejection::JsonRejection;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::StatusCode;
use axum::routing::{delete, get, post};
use skiff_api_types::*;

use super::{Api, ApiError, ApiResult, json_body, rfc3339_ms};
use crate::certs::{BookError, RenewError};
use crate::store::{CertRow, CertSource};

/// The largest body of `POST /certificates`: a chain and a key of up to
/// 64 KiB each, JSON-escaped.
const MAX_BODY_BYTES: usize = 2 * certs::MAX_CERTIFICATE_PEM_BYTES + 32 * 1024;

pub(super) fn routes() -> Router<Api> {
    Router::new()
        .route(
            "/certificates",
            get(list_certificates)
                .post(add_certificate)
                .layer(DefaultBodyLimit::max(MAX_BODY_BYTES)),
        )
        .route("/certificates/{id}", delete(remove_certificate))
        .route("/certificates/renew", post(renew_certificate))
}

fn view(c: CertRow, served: bool) -> CertificateView {
    CertificateView {
        id: c.id,
        domains: c.domains,
        issuer: c.issuer,
        not_before: rfc3339_ms(c.not_before),
        not_after: rfc3339_ms(c.not_after),
        source: match c.source {
            CertSource::Upload => CertificateSource::Upload,
            CertSource::Acme => CertificateSource::Acme,
        },
        served,
        created_at: rfc3339_ms(c.created_at),
    }
}

fn book_error(e: BookError) -> ApiError {
    match e {
        BookError::Invalid(e) => ApiError::bad_request("invalid_certificate", e.to_string()),
        BookError::Store(s) => s.into(),
        BookError::Seal(_) => ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "sealing the private key failed",
        ),
    }
}

#[utoipa::path(post, path = "/api/v1/certificates", request_body = AddCertificate,
    responses((status = 200, body = CertificateView), (status = 400, body = ApiErrorBody),
        (status = 413, body = ApiErrorBody)))]
pub(super) async fn add_certificate(
    State(api): State<Api>,
    body: Result<Json<AddCertificate>, JsonRejection>,
) -> ApiResult<CertificateView> {
    let req = json_body(body)?;
    let row = api
        .certs
        .add(&req.chain_pem, &req.key_pem)
        .await
        .map_err(book_error)?;
    let served = api.certs.served().contains(&row.id);
    Ok(Json(view(row, served)))
}

#[utoipa::path(get, path = "/api/v1/certificates",
    responses((status = 200, body = [CertificateView])))]
pub(super) async fn list_certificates(State(api): State<Api>) -> ApiResult<Vec<CertificateView>> {
    let served = api.certs.served();
    Ok(Json(
        api.certs
            .list()
            .into_iter()
            .map(|c| {
                let s = served.contains(&c.id);
                view(c, s)
            })
            .collect(),
    ))
}

#[utoipa::path(delete, path = "/api/v1/certificates/{id}",
    params(("id" = String, Path, description = "certificate id")),
    responses((status = 200, body = CertificateView), (status = 404, body = ApiErrorBody)))]
pub(super) async fn remove_certificate(
    State(api): State<Api>,
    Path(id): Path<String>,
) -> ApiResult<CertificateView> {
    let row = api
        .certs
        .remove(&id)
        .await
        .map_err(book_error)?
        .ok_or_else(|| ApiError::not_found("certificate", &id))?;
    Ok(Json(view(row, false)))
}

#[utoipa::path(post, path = "/api/v1/certificates/renew", request_body = RenewCertificate,
    responses((status = 200, body = CertificateRenewal), (status = 400, body = ApiErrorBody),
        (status = 404, body = ApiErrorBody), (status = 409, body = ApiErrorBody)))]
pub(super) async fn renew_certificate(
    State(api): State<Api>,
    body: Result<Json<RenewCertificate>, JsonRejection>,
) -> ApiResult<CertificateRenewal> {
    let req = json_body(body)?;
    match api.certs.renew(&req.domain) {
        Ok(replaces) => Ok(Json(CertificateRenewal {
            domain: req.domain.trim().to_ascii_lowercase(),
            replaces,
        })),
        Err(e @ RenewError::AcmeOff) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "acme_disabled",
            e.to_string(),
        )),
        Err(e @ (RenewError::Invalid(_) | RenewError::Wildcard(_))) => {
            Err(ApiError::bad_request("invalid_domain", e.to_string()))
        }
        Err(e @ RenewError::NotWanted { .. }) => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "no_route",
            e.to_string(),
        )),
    }
}
