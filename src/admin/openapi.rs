//! The admin API's OpenAPI 3.1 document, as served at `/openapi.json`.
//!
//! Its paths, parameters, bodies and answers are not written here: they
//! come from each handler's `#[utoipa::path]` and the `ToSchema` types it
//! names, gathered by the router that serves those handlers
//! (`super::router`), so a route cannot be served and missing from the
//! document, nor documented and not served. This module adds what no
//! handler owns: the title and the notes a schema cannot state, the rule
//! "exactly one of `rate_per_sec` and `rate`" (JSON Schema states it,
//! utoipa's derive cannot), and, when `admin.token` is set, the bearer
//! scheme with a 401 answer on every operation (the `authorize`
//! middleware's, in front of every route) but the public ones
//! ([`is_public`]: the status page's shell), which get no requirement.

use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{
    Components, Content, InfoBuilder, OpenApi, OpenApiBuilder, Ref, RefOr, ResponseBuilder,
};
use utoipa::ToSchema;

use crate::error::ErrorBody;

/// The notes of `info.description`.
const DESCRIPTION: &str = "Manage the client table (per-client rate limits) and inspect \
backends. Every error is JSON {\"code\":N,\"message\":\"...\"}; any other path answers 404 \
and any other method 405. When admin.token is set, every request needs Authorization: \
Bearer <token> (the scheme in any case), and this document, as served, lists the bearer \
scheme and the 401 answers; without a token it lists neither. GET / (the status page, HTML) is \
public: it holds no data, and its script asks for the token. capacity is a JSON Schema \
integer: 3 and 3.0 are both accepted. Limits take exactly one of rate_per_sec and rate \
(both or neither: 400; null is taken as not given). Limits whose fill time (capacity / rate) exceeds about nine years \
are refused with 400, which this schema cannot express.";

/// Paths served without the token (GET and HEAD): the status page's
/// shell, which holds no data.
const PUBLIC: &[&str] = &["/"];

/// Whether `path` is served without the token (for GET and HEAD).
pub(super) fn is_public(path: &str) -> bool {
    PUBLIC.contains(&path)
}

/// The name of the security scheme.
const BEARER: &str = "bearer";
/// The name of the shared 401 answer under `components.responses`.
const UNAUTHORIZED: &str = "Unauthorized";

/// The document the routes are gathered into: title, version and notes.
pub(super) fn base() -> OpenApi {
    OpenApiBuilder::new()
        .info(
            InfoBuilder::new()
                .title("tollgate admin API")
                .version("1")
                .description(Some(DESCRIPTION))
                .build(),
        )
        .build()
}

/// Exactly one of `rate_per_sec` and `rate` given, and not null (the
/// fields themselves are nullable: null is taken as not given).
pub(super) fn one_rate() -> serde_json::Value {
    serde_json::json!([
        {"required": ["rate_per_sec"], "properties": {"rate_per_sec": {"type": "number"}}},
        {"required": ["rate"], "properties": {"rate": {"type": "string"}}},
    ])
}

/// The request bodies that take limits, by schema name.
const LIMITS_BODIES: [&str; 2] = ["NewClient", "Limits"];

/// `api` as a server serves it: with `token`, the bearer scheme required
/// everywhere and a 401 answer on every operation.
pub(super) fn render(mut api: OpenApi, token: bool) -> String {
    if token {
        require_bearer(&mut api);
    }
    // Structs, strings and string-keyed maps only: serialising them
    // cannot fail (a unit test serves both variants).
    let mut doc = serde_json::to_value(&api).unwrap_or_default();
    for name in LIMITS_BODIES {
        if let Some(schema) = doc
            .pointer_mut(&format!("/components/schemas/{name}"))
            .and_then(|s| s.as_object_mut())
        {
            schema.insert("oneOf".into(), one_rate());
        }
    }
    doc.to_string()
}

fn require_bearer(api: &mut OpenApi) {
    let components = api.components.get_or_insert_with(Components::new);
    components.add_security_scheme(
        BEARER,
        SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
    );
    components.responses.insert(
        UNAUTHORIZED.into(),
        RefOr::T(
            ResponseBuilder::new()
                .description("missing or wrong bearer token")
                .content(
                    "application/json",
                    Content::new(Some(Ref::from_schema_name(ErrorBody::name()))),
                )
                .build(),
        ),
    );
    api.security = Some(vec![SecurityRequirement::new(BEARER, Vec::<String>::new())]);
    for (path, item) in api.paths.paths.iter_mut() {
        let public = is_public(path);
        let operations = [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.delete,
            &mut item.options,
            &mut item.head,
            &mut item.patch,
            &mut item.trace,
            &mut item.query,
        ];
        for op in operations.into_iter().flatten() {
            if public {
                // No requirement at all: overrides the document's.
                op.security = Some(Vec::new());
                continue;
            }
            op.responses.responses.insert(
                "401".into(),
                RefOr::Ref(Ref::from_response_name(UNAUTHORIZED)),
            );
        }
    }
}
