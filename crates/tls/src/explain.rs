//! A TLS failure as a sentence that says what went wrong and what to do. rustls' own texts
//! ("invalid peer certificate: UnknownIssuer") are accurate but do not say which flag fixes them.

use rustls::{AlertDescription, CertificateError, Error, InvalidMessage};

/// Finds a rustls error in `err` or its causes (also inside `std::io::Error`s) and explains it
/// from the client's side; `None` when the failure was not TLS's.
pub fn explain(err: &(dyn std::error::Error + 'static)) -> Option<String> {
    find(err).map(client_side).or_else(|| alert_in_text(err).map(|a| client_side(&Error::AlertReceived(a))))
}

/// An alert the server sent, found by its text: on the way through rustls' reader an alert
/// received after the handshake (how TLS 1.3 refuses a client certificate) reaches us as an
/// `io::Error` holding only the message.
fn alert_in_text(err: &(dyn std::error::Error + 'static)) -> Option<AlertDescription> {
    const PREFIX: &str = "received fatal alert: ";
    let mut cur = Some(err);
    while let Some(e) = cur {
        let text = match e.downcast_ref::<std::io::Error>().and_then(|io| io.get_ref()) {
            Some(inner) => inner.to_string(),
            None => e.to_string(),
        };
        if let Some((_, name)) = text.split_once(PREFIX) {
            let name = name.split(|c: char| !c.is_ascii_alphanumeric()).next().unwrap_or("");
            return [
                AlertDescription::CertificateRequired,
                AlertDescription::UnknownCA,
                AlertDescription::BadCertificate,
                AlertDescription::CertificateUnknown,
                AlertDescription::AccessDenied,
                AlertDescription::CertificateExpired,
                AlertDescription::CertificateRevoked,
            ]
            .into_iter()
            .find(|a| format!("{a:?}") == name);
        }
        cur = e.source();
    }
    None
}

/// The rustls error in `err`'s chain, if any.
pub fn find<'a>(err: &'a (dyn std::error::Error + 'static)) -> Option<&'a Error> {
    let mut cur = Some(err);
    while let Some(e) = cur {
        if let Some(t) = e.downcast_ref::<Error>() {
            return Some(t);
        }
        if let Some(inner) = e.downcast_ref::<std::io::Error>().and_then(|io| io.get_ref())
            && let Some(t) = find(inner)
        {
            return Some(t);
        }
        cur = e.source();
    }
    None
}

fn when(t: rustls_pki_types::UnixTime) -> String {
    let secs = i64::try_from(t.as_secs()).unwrap_or(i64::MAX);
    time::OffsetDateTime::from_unix_timestamp(secs)
        .ok()
        .and_then(|d| d.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_else(|| format!("{secs} s after the epoch"))
}

const MAKE: &str = "`tug certs init` makes a CA and certificates";

/// A client's view of a TLS failure.
pub fn client_side(e: &Error) -> String {
    match e {
        Error::InvalidCertificate(c) => match c {
            // A bad signature: signed by another CA of the same name (every `tug certs init` CA
            // has one name).
            CertificateError::UnknownIssuer | CertificateError::BadSignature => format!(
                "the server's certificate is not signed by a CA this client trusts: pass --ca FILE with the CA that \
                 signed it (the ca.pem of `tug certs init`), or TUG_CA ({e})"
            ),
            CertificateError::ExpiredContext { time, not_after } => format!(
                "the server's certificate has expired: it was valid until {}, and it is now {}; renew it ({MAKE})",
                when(*not_after),
                when(*time)
            ),
            CertificateError::Expired => format!("the server's certificate has expired; renew it ({MAKE})"),
            CertificateError::NotValidYetContext { time, not_before } => format!(
                "the server's certificate is not valid yet: it is valid from {}, and it is now {}; check the clocks",
                when(*not_before),
                when(*time)
            ),
            CertificateError::NotValidYet => "the server's certificate is not valid yet; check the clocks".into(),
            CertificateError::NotValidForNameContext { expected, presented } => format!(
                "the server's certificate is not for {expected:?} but for {}: connect by one of those names, or make \
                 the certificate with that name (`tug certs init --name`)",
                presented.join(", ")
            ),
            CertificateError::NotValidForName => {
                "the server's certificate is not for the name connected to: connect by a name it has, or make the \
                 certificate with that name (`tug certs init --name`)"
                    .into()
            }
            other => format!("the server's certificate was refused: {other:?}"),
        },
        Error::InvalidMessage(InvalidMessage::InvalidContentType) => {
            "the server does not speak TLS here: use an http:// URL, or start the server with --tls-cert and --tls-key".into()
        }
        Error::AlertReceived(AlertDescription::CertificateRequired) => {
            "the server requires a client certificate (mTLS): give --cert and --key (`tug certs init` makes one per agent)".into()
        }
        Error::AlertReceived(
            AlertDescription::UnknownCA | AlertDescription::BadCertificate | AlertDescription::CertificateUnknown | AlertDescription::AccessDenied,
        ) => "the server refused this client's certificate: it is not signed by the CA the server trusts for clients (its --agent-ca)".into(),
        Error::AlertReceived(AlertDescription::CertificateExpired) => {
            format!("the server refused this client's certificate: it has expired; make a new one ({MAKE})")
        }
        Error::AlertReceived(AlertDescription::CertificateRevoked) => {
            "the server refused this client's certificate: it has been revoked (it is in the server's --agent-crl); \
             an admin signs a new one with `tug certs agent DIR NAME`"
                .into()
        }
        other => format!("TLS failed: {other}"),
    }
}

/// The server's view of a failed handshake, for its log.
pub fn server_side(e: &std::io::Error) -> String {
    let Some(t) = find(e) else { return e.to_string() };
    match t {
        Error::NoCertificatesPresented => "the client presented no certificate (this endpoint requires one)".into(),
        Error::InvalidCertificate(CertificateError::UnknownIssuer | CertificateError::BadSignature) => {
            "the client's certificate is not signed by the CA trusted for clients".into()
        }
        Error::InvalidCertificate(CertificateError::Expired | CertificateError::ExpiredContext { .. }) => {
            "the client's certificate has expired".into()
        }
        Error::InvalidCertificate(CertificateError::Revoked) => "the client's certificate has been revoked (--agent-crl)".into(),
        Error::AlertReceived(AlertDescription::UnknownCA | AlertDescription::BadCertificate) => {
            "the client does not trust this server's certificate (it lacks the CA that signed it)".into()
        }
        Error::AlertReceived(AlertDescription::CertificateExpired) => "the client says this server's certificate has expired".into(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_alert_known_only_by_its_text_is_still_explained() {
        let io = std::io::Error::new(std::io::ErrorKind::InvalidData, "received fatal alert: CertificateRequired");
        let why = explain(&io).unwrap();
        assert!(why.contains("requires a client certificate") && why.contains("--cert"), "{why}");
        let io = std::io::Error::new(std::io::ErrorKind::InvalidData, Error::InvalidCertificate(CertificateError::UnknownIssuer));
        assert!(explain(&io).unwrap().contains("pass --ca FILE"));
        let io = std::io::Error::new(std::io::ErrorKind::InvalidData, "received fatal alert: CertificateRevoked");
        assert!(explain(&io).unwrap().contains("it has been revoked"));
        assert_eq!(explain(&std::io::Error::other("connection refused")), None);
    }
}
