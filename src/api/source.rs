//! The `spec.source` part of the API: one struct per kind of source.

use std::collections::BTreeMap;

use kube::KubeSchema;
use serde::{Deserialize, Serialize};

use super::{DNS1123_SUBDOMAIN, GO_DURATION, USERNAME};

/// A registry host as it appears as a key in `.dockerconfigjson`
/// (`registry.example.com`, `registry.example.com:5000`,
/// `https://index.docker.io/v1/`).
pub const REGISTRY_HOST: &str = r"^(https?://)?[A-Za-z0-9]([-A-Za-z0-9.]*[A-Za-z0-9])?(:[0-9]{1,5})?(/[-A-Za-z0-9._~/]*)?$";

/// Where the credential comes from: exactly one of `ecr`, `oauth2`, `http`,
/// `basic`, `rotate`.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[x_kube(validation = kube::core::Rule::new(
    "[has(self.ecr), has(self.oauth2), has(self.http), has(self.basic), has(self.rotate)].filter(x, x).size() == 1"
).message("exactly one of ecr, oauth2, http, basic or rotate must be set"))]
#[serde(rename_all = "camelCase")]
pub struct CredentialSource {
    /// Mint a 12-hour token with AWS ECR `GetAuthorizationToken`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ecr: Option<EcrSource>,
    /// Fetch an access token with the OAuth2 client-credentials grant and use
    /// it as the registry password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oauth2: Option<OAuth2Source>,
    /// Fetch a token from a generic HTTP endpoint and map its JSON response.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpSource>,
    /// Use a username and password (robot account, deploy token, access
    /// token) stored in a Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub basic: Option<BasicSource>,
    /// Create a scoped, expiring key at the registry itself (a Docker Hub
    /// access token, a Harbor robot account, a GitLab project or group
    /// access token) with an admin credential from a Secret, and replace it
    /// with a new one before it expires; the replaced key is revoked after a
    /// grace period.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotate: Option<RotateSource>,
}

/// A Secret in the RegistryCredential's own namespace.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretRef {
    /// Name of the Secret, in the RegistryCredential's namespace.
    #[schemars(length(min = 1, max = 253), pattern(DNS1123_SUBDOMAIN))]
    pub name: String,
}

/// A single key of a Secret in the RegistryCredential's own namespace.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// Name of the Secret, in the RegistryCredential's namespace.
    #[schemars(length(min = 1, max = 253), pattern(DNS1123_SUBDOMAIN))]
    pub name: String,
    /// Key within the Secret's data.
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

// ---------------------------------------------------------------- ECR

/// AWS ECR: `GetAuthorizationToken` for one or more registries.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[x_kube(validation = kube::core::Rule::new("!has(self.webIdentity) || has(self.roleArn)")
    .message("webIdentity requires roleArn: the ServiceAccount token is exchanged for that role"))]
#[x_kube(validation = kube::core::Rule::new("!(has(self.webIdentity) && has(self.credentialsSecretRef))")
    .message("webIdentity and credentialsSecretRef are mutually exclusive"))]
#[x_kube(validation = kube::core::Rule::new("!has(self.endpoint) || self.endpoint.startsWith('https://') || (has(self.allowInsecureHTTP) && self.allowInsecureHTTP)")
    .message("endpoint must use https:// (set allowInsecureHTTP: true to allow http://)")
    .field_path(".endpoint"))]
#[x_kube(validation = kube::core::Rule::new("!has(self.stsEndpoint) || self.stsEndpoint.startsWith('https://') || (has(self.allowInsecureHTTP) && self.allowInsecureHTTP)")
    .message("stsEndpoint must use https:// (set allowInsecureHTTP: true to allow http://)")
    .field_path(".stsEndpoint"))]
#[x_kube(validation = kube::core::Rule::new("!(has(self.public) && self.public) || !has(self.registryIds)")
    .message("registryIds does not apply to ECR Public"))]
#[serde(rename_all = "camelCase")]
pub struct EcrSource {
    /// AWS region of the registries, e.g. `eu-west-1`. ECR Public always
    /// uses `us-east-1`.
    #[schemars(length(min = 1, max = 32), pattern(r"^[a-z]{2}(-[a-z]+)+-[0-9]+$"))]
    pub region: String,
    /// 12-digit AWS account ids of the registries. Each id becomes one entry
    /// in the Secret, keyed by its registry host. Defaults to the account of
    /// the credentials in use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 20), inner(pattern(r"^[0-9]{12}$")))]
    pub registry_ids: Option<Vec<String>>,
    /// Mint a token for ECR Public (`public.ecr.aws`) instead of a private
    /// registry. ECR Public tokens are issued in `us-east-1`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public: Option<bool>,
    /// Override the ECR API endpoint (VPC endpoints, FIPS endpoints, tests).
    /// Only endpoints the operator's admin allows
    /// (`--aws-endpoint-overrides`) are used; others are refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 2048), pattern(r"^https?://"))]
    pub endpoint: Option<String>,
    /// Override the STS endpoint used for `roleArn` and `webIdentity`. Only
    /// endpoints the operator's admin allows (`--aws-endpoint-overrides`) are
    /// used; others are refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 2048), pattern(r"^https?://"))]
    pub sts_endpoint: Option<String>,
    /// Allow `http://` endpoints. Only for tests and trusted local networks.
    #[serde(default, rename = "allowInsecureHTTP", skip_serializing_if = "Option::is_none")]
    pub allow_insecure_http: Option<bool>,
    /// Static AWS keys from a Secret in this namespace, with keys
    /// `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY` and optionally
    /// `AWS_SESSION_TOKEN`. When neither this nor `webIdentity` is set, the
    /// operator's own AWS identity is used, if the operator allows it for
    /// this namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret_ref: Option<SecretRef>,
    /// IAM role to assume (STS `AssumeRole`) on top of the base credentials,
    /// e.g. for pulling from another account. The role session name is always
    /// `regcred-<namespace>-<name>` (shortened with a hash to AWS's 64
    /// characters), so IAM trust policies and CloudTrail can tell credentials
    /// apart.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 20, max = 2048), pattern(r"^arn:aws[a-z-]*:iam::[0-9]{12}:role/.+$"))]
    pub role_arn: Option<String>,
    /// External id for `AssumeRole`, when the role's trust policy requires one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 2, max = 1224))]
    pub external_id: Option<String>,
    /// Verify before swap: log in to each registry with the new token before
    /// writing it (see the `http` source's `verify`). Off by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verify: Option<bool>,
    /// Exchange a token of a ServiceAccount in this namespace for `roleArn`
    /// (STS `AssumeRoleWithWebIdentity`), so each team uses its own IAM role.
    /// The ServiceAccount must opt in with the annotation
    /// `regcred.dev/web-identity: "true"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub web_identity: Option<WebIdentity>,
}

/// A ServiceAccount token exchanged for an IAM role.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct WebIdentity {
    /// ServiceAccount in this namespace whose token is requested.
    #[schemars(length(min = 1, max = 253), pattern(DNS1123_SUBDOMAIN))]
    pub service_account_name: String,
    /// Audience of the requested token. Defaults to `sts.amazonaws.com`; only
    /// audiences the operator's admin allows (`--web-identity-audiences`) are
    /// accepted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    pub audience: Option<String>,
}

// ---------------------------------------------------------------- shared HTTP settings

/// TLS settings for an HTTPS endpoint.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct TlsConfig {
    /// PEM CA bundle to trust instead of the built-in public roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_bundle_secret_ref: Option<SecretKeyRef>,
    /// Client certificate for mutual TLS: a `kubernetes.io/tls` Secret in
    /// this namespace (keys `tls.crt` and `tls.key`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_certificate_secret_ref: Option<SecretRef>,
}

// ---------------------------------------------------------------- OAuth2

/// How the OAuth2 client authenticates to the token endpoint.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, schemars::JsonSchema)]
pub enum ClientAuthMethod {
    /// HTTP Basic authentication with client id and secret (RFC 6749 §2.3.1).
    #[default]
    #[serde(rename = "client_secret_basic")]
    ClientSecretBasic,
    /// Client id and secret in the form body.
    #[serde(rename = "client_secret_post")]
    ClientSecretPost,
}

/// OAuth2 client-credentials grant (RFC 6749 §4.4).
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[x_kube(validation = kube::core::Rule::new("self.tokenURL.startsWith('https://') || (has(self.allowInsecureHTTP) && self.allowInsecureHTTP)")
    .message("tokenURL must use https:// (set allowInsecureHTTP: true to allow http://)")
    .field_path(".tokenURL"))]
#[serde(rename_all = "camelCase")]
pub struct OAuth2Source {
    /// Token endpoint URL. Credentials never go in the URL (no `user:pass@`):
    /// they come from `clientSecretRef`.
    #[serde(rename = "tokenURL")]
    #[schemars(length(min = 1, max = 2048), pattern(r"^https?://[^\s/?#@]+([/?#]\S*)?$"))]
    pub token_url: String,
    /// Secret in this namespace with the client id and secret.
    pub client_secret_ref: ClientSecretRef,
    /// How the client authenticates: `client_secret_basic` (default) or
    /// `client_secret_post`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth_method: Option<ClientAuthMethod>,
    /// Scopes to request.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32), inner(length(min = 1, max = 256)))]
    pub scopes: Vec<String>,
    /// `audience` form parameter, for servers that want one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024))]
    pub audience: Option<String>,
    /// Extra form parameters sent with the token request.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 32))]
    pub extra_params: BTreeMap<String, String>,
    /// Username written next to the access token. Defaults to
    /// `oauth2accesstoken` (what Google Artifact Registry expects). No `:` and
    /// no control characters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256), pattern(USERNAME))]
    pub username: Option<String>,
    /// Registry hosts the token is written for.
    #[schemars(length(min = 1, max = 20), inner(length(min = 1, max = 253), pattern(REGISTRY_HOST)))]
    pub registries: Vec<String>,
    /// Revoke tokens that are no longer used (RFC 7009). Off when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoke: Option<Revocation>,
    #[serde(flatten)]
    pub client: HttpClientSettings,
}

/// Token revocation (RFC 7009): a replaced or deleted credential's token
/// should not stay valid longer than needed. A failed revocation is reported
/// (Event, metric) and retried a few times; it never holds up a rotation,
/// and delays a deletion by at most one attempt.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Revocation {
    /// After a rotation has written the new token and `delay` has passed,
    /// revoke the previous one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_rotation: Option<bool>,
    /// How long the previous token stays valid after a rotation (Pods
    /// starting right then may still pull with it), as a Go duration up to
    /// `1h`. Defaults to `1m`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64), pattern(GO_DURATION))]
    #[x_kube(validation = kube::core::Rule::new("duration(self) <= duration('1h')").message("delay must be at most 1h"))]
    pub delay: Option<String>,
    /// When the RegistryCredential is deleted, revoke its current token (a
    /// finalizer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_delete: Option<bool>,
    /// The revocation endpoint. Defaults to `revocation_endpoint` from the
    /// server's metadata (`/.well-known/openid-configuration`, else
    /// `/.well-known/oauth-authorization-server`, at the token URL's origin).
    #[serde(default, rename = "revocationURL", skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 2048), pattern(r"^https?://[^\s/?#@]+([/?#]\S*)?$"))]
    pub revocation_url: Option<String>,
    /// The authorization server's issuer (e.g.
    /// `https://sso.example.com/realms/team`), where its metadata is looked
    /// up when `revocationURL` is not set: OpenID Connect Discovery, then
    /// RFC 8414. Without it, the token URL's path prefixes are tried, longest
    /// first. Either way a document counts only if it names that issuer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 2048), pattern(r"^https?://[^\s/?#@]+(/[^\s?#]*)?$"))]
    pub issuer: Option<String>,
}

/// Secret keys holding an OAuth2 client's id and secret.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClientSecretRef {
    /// Name of the Secret, in the RegistryCredential's namespace.
    #[schemars(length(min = 1, max = 253), pattern(DNS1123_SUBDOMAIN))]
    pub name: String,
    /// Key holding the client id. Defaults to `client_id`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub client_id_key: Option<String>,
    /// Key holding the client secret. Defaults to `client_secret`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub client_secret_key: Option<String>,
}

/// Connection settings shared by the `oauth2` and `http` sources.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct HttpClientSettings {
    /// Allow an `http://` URL. Tokens then cross the network in clear text:
    /// only for tests and trusted local networks.
    #[serde(default, rename = "allowInsecureHTTP", skip_serializing_if = "Option::is_none")]
    pub allow_insecure_http: Option<bool>,
    /// CA bundle and client certificate for the endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsConfig>,
    /// Request timeout as a Go duration, from `1s` to `60s`. Defaults to `10s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64), pattern(GO_DURATION))]
    #[x_kube(validation = kube::core::Rule::new("duration(self) >= duration('1s') && duration(self) <= duration('60s')").message("timeout must be between 1s and 60s"))]
    pub timeout: Option<String>,
    /// Verify before swap: log in to each registry (as `docker login` does)
    /// with the freshly minted credential before writing it; a refusal keeps
    /// the current Secret (Ready=False, reason `RegistryRejected`). Off by
    /// default for token sources: it needs the operator to reach every
    /// registry (an egress policy may not allow that), and some registries
    /// accept a token only for the repositories it names, not at `/v2/`.
    /// Registries are reached over https with the public roots (plain http
    /// with `allowInsecureHTTP`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verify: Option<bool>,
}

// ---------------------------------------------------------------- generic HTTP

/// HTTP method of a token request.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, schemars::JsonSchema)]
pub enum HttpMethod {
    #[default]
    #[serde(rename = "GET")]
    Get,
    #[serde(rename = "POST")]
    Post,
}

/// A generic token endpoint whose JSON response is mapped by JSON pointers.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[x_kube(validation = kube::core::Rule::new("self.url.startsWith('https://') || (has(self.allowInsecureHTTP) && self.allowInsecureHTTP)")
    .message("url must use https:// (set allowInsecureHTTP: true to allow http://)")
    .field_path(".url"))]
#[serde(rename_all = "camelCase")]
pub struct HttpSource {
    /// Token endpoint URL. Credentials never go in the URL (no `user:pass@`):
    /// use `auth` or `headers`.
    #[schemars(length(min = 1, max = 2048), pattern(r"^https?://[^\s/?#@]+([/?#]\S*)?$"))]
    pub url: String,
    /// `GET` (default) or `POST`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<HttpMethod>,
    /// Query parameters, e.g. a Docker token endpoint's `service` and `scope`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 32))]
    pub query: BTreeMap<String, String>,
    /// Request headers; values may come from Secrets.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub headers: Vec<HttpHeader>,
    /// Authentication for the token request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<HttpAuth>,
    /// How to read the response.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response: Option<ResponseMapping>,
    /// Registry hosts the token is written for.
    #[schemars(length(min = 1, max = 20), inner(length(min = 1, max = 253), pattern(REGISTRY_HOST)))]
    pub registries: Vec<String>,
    #[serde(flatten)]
    pub client: HttpClientSettings,
}

/// One request header.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[x_kube(validation = kube::core::Rule::new("has(self.value) != has(self.valueFrom)")
    .message("set exactly one of value or valueFrom"))]
#[serde(rename_all = "camelCase")]
pub struct HttpHeader {
    /// Header name.
    #[schemars(length(min = 1, max = 256), pattern(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$"))]
    pub name: String,
    /// A literal value (not for secrets: use `valueFrom`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 4096))]
    pub value: Option<String>,
    /// The value, from a Secret key in this namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value_from: Option<SecretKeyRef>,
}

/// Authentication for a generic token request.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[x_kube(validation = kube::core::Rule::new("has(self.basic) != has(self.bearer)")
    .message("set exactly one of basic or bearer"))]
#[serde(rename_all = "camelCase")]
pub struct HttpAuth {
    /// HTTP Basic authentication with `username` and `password` from a Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub basic: Option<SecretRef>,
    /// `Authorization: Bearer` with a token from a Secret key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bearer: Option<SecretKeyRef>,
}

/// JSON pointers (RFC 6901) into the token response.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ResponseMapping {
    /// Pointer to the password. Defaults to `/token`, then `/access_token`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 512), pattern(r"^(/.*)?$"))]
    pub password_pointer: Option<String>,
    /// Pointer to the username in the response.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 512), pattern(r"^(/.*)?$"))]
    pub username_pointer: Option<String>,
    /// A fixed username, when the response has none. Defaults to `token`.
    /// No `:` and no control characters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256), pattern(USERNAME))]
    pub username: Option<String>,
    /// Pointer to a lifetime in seconds. Defaults to `/expires_in`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 512), pattern(r"^(/.*)?$"))]
    pub expires_in_pointer: Option<String>,
    /// Pointer to an absolute expiry: RFC 3339 text or Unix seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 512), pattern(r"^(/.*)?$"))]
    pub expires_at_pointer: Option<String>,
    /// Lifetime assumed when the response gives no expiry and the token is
    /// not a JWT with an `exp` claim. Defaults to `60s`, as the Docker token
    /// specification prescribes. From `1s` to `8760h`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64), pattern(GO_DURATION))]
    #[x_kube(validation = kube::core::Rule::new("duration(self) >= duration('1s') && duration(self) <= duration('8760h')").message("defaultLifetime must be between 1s and 8760h"))]
    pub default_lifetime: Option<String>,
}

// ---------------------------------------------------------------- basic

/// Static credentials from a Secret.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct BasicSource {
    /// Secret in this namespace holding the username and password.
    pub secret_ref: BasicSecretRef,
    /// Registry hosts the credentials are written for.
    #[schemars(length(min = 1, max = 20), inner(length(min = 1, max = 253), pattern(REGISTRY_HOST)))]
    pub registries: Vec<String>,
    /// How often to re-read the Secret even without a change event, as a Go
    /// duration from `1m` to `168h`. Defaults to `1h`. Changes to the Secret
    /// are picked up at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64), pattern(GO_DURATION))]
    #[x_kube(validation = kube::core::Rule::new("duration(self) >= duration('1m') && duration(self) <= duration('168h')").message("refreshInterval must be between 1m and 168h"))]
    pub refresh_interval: Option<String>,
    /// Log in to each registry (Docker Registry HTTP API v2, as `docker
    /// login` does) before writing the credentials, so a wrong password never
    /// replaces a working one. Defaults to `true`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verify: Option<bool>,
    /// Verify over plain `http://` instead of `https://`. Only for tests and
    /// trusted local networks.
    #[serde(default, rename = "allowInsecureHTTP", skip_serializing_if = "Option::is_none")]
    pub allow_insecure_http: Option<bool>,
    /// CA bundle (a private registry's CA) and client certificate for the
    /// login check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsConfig>,
}

/// Secret keys holding a username and password.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct BasicSecretRef {
    /// Name of the Secret, in the RegistryCredential's namespace.
    #[schemars(length(min = 1, max = 253), pattern(DNS1123_SUBDOMAIN))]
    pub name: String,
    /// Key holding the username. Defaults to `username`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub username_key: Option<String>,
    /// Key holding the password or token. Defaults to `password`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub password_key: Option<String>,
}

// ---------------------------------------------------------------- rotate

/// Keys created, swapped and revoked at the registry's own API. Set exactly
/// one of `dockerHub`, `harbor`, `gitlab`. Each rotation creates a new key
/// named `regcred-<credential uid prefix>-<unix seconds>`, writes it to the
/// Secret in place, and revokes the replaced key after `grace`; keys with
/// this credential's name prefix that no Secret uses are revoked when the
/// operator starts and when the credential is deleted.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[x_kube(validation = kube::core::Rule::new("[has(self.dockerHub), has(self.harbor), has(self.gitlab)].filter(x, x).size() == 1")
    .message("exactly one of dockerHub, harbor or gitlab must be set"))]
#[x_kube(validation = kube::core::Rule::new("!has(self.url) || self.url.startsWith('https://') || (has(self.allowInsecureHTTP) && self.allowInsecureHTTP)")
    .message("url must use https:// (set allowInsecureHTTP: true to allow http://)")
    .field_path(".url"))]
#[x_kube(validation = kube::core::Rule::new("has(self.url) || !has(self.harbor)")
    .message("harbor needs url (the Harbor instance, e.g. https://harbor.example.com)"))]
#[serde(rename_all = "camelCase")]
pub struct RotateSource {
    /// Docker Hub personal access tokens of the admin account.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub docker_hub: Option<DockerHubKeys>,
    /// Harbor project robot accounts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub harbor: Option<HarborKeys>,
    /// GitLab project or group access tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gitlab: Option<GitLabKeys>,
    /// The vendor's API. Defaults to `https://hub.docker.com` for Docker Hub
    /// and `https://gitlab.com` for GitLab; required for Harbor.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 2048), pattern(r"^https?://[^\s/?#@]+(/[^\s?#]*)?$"))]
    pub url: Option<String>,
    /// Secret in this namespace with the admin credential that creates,
    /// lists and revokes keys: Docker Hub `username` and `password` (of the
    /// account that owns the tokens; its username is also the pull
    /// username), Harbor `username` and `password` (a project admin), GitLab
    /// `token` (with scope `api` and the Maintainer role). It never reaches
    /// the pull Secret.
    pub admin_secret_ref: SecretRef,
    /// Registry hosts the key is written for. Defaults to
    /// `https://index.docker.io/v1/` for Docker Hub; required otherwise.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 20), inner(length(min = 1, max = 253), pattern(REGISTRY_HOST)))]
    pub registries: Vec<String>,
    /// How long each key lives, as a Go duration from `24h` to `8760h`.
    /// Harbor and GitLab count whole days: a lifetime is rounded up to one.
    /// Defaults to `720h` (30 days). Keys are replaced once two thirds of it
    /// have passed, or as `renewBefore` says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64), pattern(GO_DURATION))]
    #[x_kube(validation = kube::core::Rule::new("duration(self) >= duration('24h') && duration(self) <= duration('8760h')").message("lifetime must be between 24h and 8760h"))]
    pub lifetime: Option<String>,
    /// How long a replaced key keeps working (Pods starting during the swap
    /// may still pull with it), as a Go duration from `0s` to `24h`.
    /// Defaults to `10m`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64), pattern(GO_DURATION))]
    #[x_kube(validation = kube::core::Rule::new("duration(self) <= duration('24h')").message("grace must be at most 24h"))]
    pub grace: Option<String>,
    /// Allow an `http://` API URL and verification over plain http. Keys
    /// then cross the network in clear text: only for tests and trusted
    /// local networks.
    #[serde(default, rename = "allowInsecureHTTP", skip_serializing_if = "Option::is_none")]
    pub allow_insecure_http: Option<bool>,
    /// CA bundle and client certificate for the vendor's API.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsConfig>,
    /// Log in to each registry with a new key before writing it; a refusal
    /// revokes the new key and keeps the current Secret. Defaults to `true`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verify: Option<bool>,
}

/// Scopes of a Docker Hub personal access token that a pull Secret may hold.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, schemars::JsonSchema)]
pub enum DockerHubScope {
    #[serde(rename = "repo:public_read")]
    PublicRead,
    #[serde(rename = "repo:read")]
    Read,
    #[serde(rename = "repo:write")]
    Write,
}

/// Docker Hub: `POST /v2/access-tokens` as the admin account.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct DockerHubKeys {
    /// Scopes of each new token. Defaults to `[repo:read]`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 3))]
    pub scopes: Vec<DockerHubScope>,
}

/// What a Harbor robot may do in its project.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, schemars::JsonSchema)]
pub enum HarborAction {
    #[serde(rename = "pull")]
    Pull,
    #[serde(rename = "push")]
    Push,
}

/// Harbor: a new project robot account (`POST /api/v2.0/robots`) per
/// rotation.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct HarborKeys {
    /// The Harbor project the robots belong to.
    #[schemars(length(min = 1, max = 255), pattern(r"^[a-z0-9]+(?:[._-][a-z0-9]+)*$"))]
    pub project: String,
    /// Repository actions each robot gets. Defaults to `[pull]`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 2))]
    pub actions: Vec<HarborAction>,
}

/// Scopes of a GitLab access token that a pull Secret may hold.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, schemars::JsonSchema)]
pub enum GitLabScope {
    #[serde(rename = "read_registry")]
    ReadRegistry,
    #[serde(rename = "write_registry")]
    WriteRegistry,
}

/// GitLab: a project (or group) access token
/// (`POST /api/v4/projects/:id/access_tokens`) per rotation. Never the
/// `rotate` endpoint: replaying a rotated token revokes its whole family.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[x_kube(validation = kube::core::Rule::new("has(self.project) != has(self.group)")
    .message("set exactly one of project or group"))]
#[serde(rename_all = "camelCase")]
pub struct GitLabKeys {
    /// Project id or full path (`group/project`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 255), pattern(r"^[A-Za-z0-9_.][A-Za-z0-9_./-]*$"))]
    pub project: Option<String>,
    /// Group id or full path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 255), pattern(r"^[A-Za-z0-9_.][A-Za-z0-9_./-]*$"))]
    pub group: Option<String>,
    /// Scopes of each new token. Defaults to `[read_registry]`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 2))]
    pub scopes: Vec<GitLabScope>,
    /// The token's role: 10 (Guest), 15 (Planner), 20 (Reporter, the
    /// default: enough to pull from a private project), 30 (Developer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 10, max = 30))]
    #[x_kube(validation = kube::core::Rule::new("self in [10, 15, 20, 30]").message("accessLevel must be 10, 15, 20 or 30"))]
    pub access_level: Option<i32>,
}
