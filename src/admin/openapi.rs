//! The admin API's OpenAPI 3.1 document, as served at `/openapi.json`.
//!
//! Its paths, parameters, bodies and answers are not written here: they
//! come from each handler's `#[utoipa::path]` and the `ToSchema` types it
//! names, gathered by the router that serves those handlers
//! (`super::router`), so a route cannot be served and missing from the
//! document, nor documented and not served. This module adds what no
//! handler owns: the title and the notes a schema cannot state, the rule
//! "exactly one of `rate_per_sec` and `rate`" (JSON Schema states it,
//! utoipa's derive cannot), the answers of the middleware in front of
//! every route (`super::guard`: 421 for a `Host` not served, on every
//! operation; 403 for a browser's request from another site, on every
//! state-changing one), and, when `admin.token` is set, the bearer
//! scheme with a 401 answer (and the 429 of too many wrong tokens) on
//! every operation (the `authorize` middleware's) but the public ones
//! ([`is_public`]: the status page's shell), which get no requirement.

use utoipa::openapi::header::HeaderBuilder;
use utoipa::openapi::path::Operation;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{
    Components, Content, InfoBuilder, OpenApi, OpenApiBuilder, Ref, RefOr, Response,
    ResponseBuilder,
};
use utoipa::ToSchema;

use crate::error::ErrorBody;

/// The notes of `info.description`.
const DESCRIPTION: &str = "Manage the client table (per-client rate limits), inspect \
backends, pools and routes, and drain or enable a backend. A backend name is unique within \
its pool: /backends/{name}/drain and /enable answer 409 for a name more than one pool has, \
and /pools/{pool}/backends/{name}/... name the pool. Every error is JSON {\"code\":N,\"message\":\"...\"}; any other path answers 404 \
and any other method 405. When admin.token is set, every request needs Authorization: \
Bearer <token> (the scheme in any case), and this document, as served, lists the bearer \
scheme and the 401 answers; without a token it lists neither. A few wrong tokens from one \
address, then one a second: past that, its requests with a token get 429 with Retry-After. \
A Host other than the loopback names, the listen address and admin.allowed_hosts gets 421 \
(DNS rebinding). A request other than GET, HEAD, OPTIONS or TRACE whose Origin is not this \
API's own (the scheme, then the host and port of its Host), or whose Sec-Fetch-Site is \
cross-site or same-site, gets 403: a browser sent it for another site. GET / (the status \
page, HTML) is public: it holds no data, and its script asks for the token. capacity is a JSON Schema \
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
/// The names of the shared answers under `components.responses`.
const UNAUTHORIZED: &str = "Unauthorized";
const TOO_MANY_BAD_TOKENS: &str = "TooManyBadTokens";
const MISDIRECTED: &str = "MisdirectedHost";
const CROSS_SITE: &str = "CrossSite";

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
    guard_answers(&mut api);
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

/// A JSON error answer described by `description`.
fn error_answer(description: &str) -> ResponseBuilder {
    ResponseBuilder::new().description(description).content(
        "application/json",
        Content::new(Some(Ref::from_schema_name(ErrorBody::name()))),
    )
}

/// Calls `each` with every operation of `api`: its path, whether its
/// method changes state (anything but GET, HEAD, OPTIONS, TRACE), and the
/// operation.
fn for_each_operation(api: &mut OpenApi, mut each: impl FnMut(&str, bool, &mut Operation)) {
    for (path, item) in api.paths.paths.iter_mut() {
        let operations = [
            (&mut item.get, false),
            (&mut item.put, true),
            (&mut item.post, true),
            (&mut item.delete, true),
            (&mut item.options, false),
            (&mut item.head, false),
            (&mut item.patch, true),
            (&mut item.trace, false),
            (&mut item.query, false),
        ];
        for (op, changes) in operations {
            if let Some(op) = op {
                each(path, changes, op);
            }
        }
    }
}

fn add_answer(components: &mut Components, name: &str, answer: Response) {
    components.responses.insert(name.into(), RefOr::T(answer));
}

fn refer(op: &mut Operation, status: &str, name: &str) {
    op.responses
        .responses
        .insert(status.into(), RefOr::Ref(Ref::from_response_name(name)));
}

/// The answers of `super::guard::front`, in front of every route.
fn guard_answers(api: &mut OpenApi) {
    let components = api.components.get_or_insert_with(Components::new);
    add_answer(
        components,
        MISDIRECTED,
        error_answer(
            "the Host is not one this admin API serves (loopback names, the listen address, \
             admin.allowed_hosts): a DNS-rebinding page's request carries its own name",
        )
        .build(),
    );
    add_answer(
        components,
        CROSS_SITE,
        error_answer(
            "a browser sent this request for another site: its Origin is not this API's own, \
             or its Sec-Fetch-Site is cross-site or same-site",
        )
        .build(),
    );
    for_each_operation(api, |_, changes, op| {
        refer(op, "421", MISDIRECTED);
        if changes {
            refer(op, "403", CROSS_SITE);
        }
    });
}

fn require_bearer(api: &mut OpenApi) {
    let components = api.components.get_or_insert_with(Components::new);
    components.add_security_scheme(
        BEARER,
        SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
    );
    add_answer(
        components,
        UNAUTHORIZED,
        error_answer("missing or wrong bearer token").build(),
    );
    add_answer(
        components,
        TOO_MANY_BAD_TOKENS,
        error_answer(
            "too many wrong bearer tokens from this address: its requests with a token are \
             refused, the right one included, until Retry-After",
        )
        .header(
            "Retry-After",
            HeaderBuilder::new()
                .description(Some("seconds until a token is judged again"))
                .build(),
        )
        .build(),
    );
    api.security = Some(vec![SecurityRequirement::new(BEARER, Vec::<String>::new())]);
    for_each_operation(api, |path, _, op| {
        if is_public(path) {
            // No requirement at all: overrides the document's.
            op.security = Some(Vec::new());
            return;
        }
        refer(op, "401", UNAUTHORIZED);
        refer(op, "429", TOO_MANY_BAD_TOKENS);
    });
}
