//! The operator's own connections to a target database (online volume snapshots hold
//! backup mode on one; restores are verified through one): the credentials (and CA) read
//! from the target's Secrets, the host qualified with the namespace.

use k8s_openapi::api::core::v1::Secret;
use kube::Api;

use super::{Context, Error};
use crate::{
    api::DatabaseTarget,
    postgres::{ConnectionArgs, PgConnection},
};

/// The connection to `host` with `target`'s credentials and TLS settings.
pub async fn connection(
    ctx: &Context,
    namespace: &str,
    target: &DatabaseTarget,
    host: String,
) -> Result<PgConnection, Error> {
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), namespace);
    let read = async |name: &str| {
        secrets.get(name).await.map_err(|source| Error::Kube {
            what: format!("read Secret {namespace}/{name}"),
            source,
        })
    };
    let creds = &target.credentials_secret;
    let secret = read(&creds.name).await?;
    let user = secret_bytes(&secret, &creds.username_key);
    let password = secret_bytes(&secret, &creds.password_key);
    let ca = match &target.ssl_root_cert {
        Some(ca) => secret_bytes(&read(&ca.name).await?, &ca.key),
        None => None,
    };
    // An address given for this host name (an operator outside the cluster).
    let (host, port) = match ctx.settings.database_addresses.get(&host) {
        Some(address) => match address.rsplit_once(':') {
            Some((a, p)) => (a.to_string(), p.parse().unwrap_or(5432)),
            None => (address.clone(), u16::try_from(target.port).unwrap_or(5432)),
        },
        None => (host, u16::try_from(target.port).unwrap_or(5432)),
    };
    // What is read from Secrets never appears in status, events or logs.
    let user = user.and_then(|u| String::from_utf8(u).ok());
    let password = password.and_then(|p| String::from_utf8(p).ok());
    if let Some(user) = &user {
        crate::redact::name(user);
    }
    if let Some(password) = &password {
        crate::redact::secret(password);
    }
    let args = ConnectionArgs {
        pg_host: host,
        pg_port: port,
        pg_server_role: crate::postgres::ServerRole::Any,
        pg_user: user.unwrap_or_else(|| "postgres".into()),
        pg_database: target.database.clone(),
        pg_sslmode: target.ssl_mode.as_libpq().into(),
        pg_sslrootcert: None,
        pg_connect_timeout: 10,
        pg_allow_weak_auth: target.allow_weak_authentication,
        pg_options: None,
    };
    Ok(PgConnection::with_secrets(args, password, ca))
}

fn secret_bytes(secret: &Secret, key: &str) -> Option<Vec<u8>> {
    secret
        .data
        .as_ref()
        .and_then(|d| d.get(key))
        .map(|b| b.0.clone())
        .or_else(|| {
            secret
                .string_data
                .as_ref()
                .and_then(|d| d.get(key))
                .map(|s| s.clone().into_bytes())
        })
}

/// The host the operator connects to: `target.host` as given, else `<pod>.<service>` of
/// the StatefulSet qualified with the namespace (the operator runs in a namespace of its
/// own).
pub fn operator_host(
    target: &DatabaseTarget,
    pod: &str,
    service: Option<&str>,
    namespace: &str,
) -> Option<String> {
    if let Some(host) = target.host.as_ref().filter(|h| !h.is_empty()) {
        return Some(super::bound_host::qualified(host, namespace, target));
    }
    let service = service.filter(|s| !s.is_empty())?;
    Some(format!("{pod}.{service}.{namespace}.svc"))
}
