//! How mail leaves the machine: SMTP to the local MTA, or sendmail.

use lettre::message::{Mailbox, header::ContentType};
use lettre::transport::smtp::authentication::Credentials;
use lettre::{AsyncSendmailTransport, AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

use super::Mail;
use crate::config::{MailConfig, MailTransport};

/// Why a mail could not be built or sent.
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    /// A configured address does not parse.
    #[error("mail.{key}: {value:?} is not a mail address")]
    Address {
        /// `destemail` or `sender`.
        key: &'static str,
        /// The value.
        value: String,
    },
    /// The SMTP settings were refused by lettre.
    #[error("mail: cannot set up SMTP to {host}:{port}: {source}")]
    Smtp {
        /// SMTP host.
        host: String,
        /// SMTP port.
        port: u16,
        /// lettre's reason.
        source: lettre::transport::smtp::Error,
    },
    /// Building the message failed.
    #[error("mail: cannot build the message: {0}")]
    Build(#[from] lettre::error::Error),
    /// The MTA refused or could not be reached.
    #[error("mail: SMTP delivery failed (is the MTA on {target} running?): {source}")]
    SmtpSend {
        /// host:port.
        target: String,
        /// lettre's reason.
        source: lettre::transport::smtp::Error,
    },
    /// The sendmail binary failed.
    #[error("mail: sendmail failed: {0}")]
    Sendmail(#[from] lettre::transport::sendmail::Error),
}

/// A ready-to-use mail transport with its envelope addresses.
pub struct Transport {
    kind: Kind,
    from: Mailbox,
    to: Mailbox,
}

enum Kind {
    Smtp {
        transport: AsyncSmtpTransport<Tokio1Executor>,
        target: String,
    },
    Sendmail(AsyncSendmailTransport<Tokio1Executor>),
}

impl Transport {
    /// Builds the transport `[mail]` asks for.
    pub fn from_config(config: &MailConfig) -> Result<Transport, NotifyError> {
        let parse = |key, value: &str| {
            value.parse::<Mailbox>().map_err(|_| NotifyError::Address {
                key,
                value: value.to_owned(),
            })
        };
        let from = parse("sender", &config.sender)?;
        let to = parse("destemail", &config.destemail)?;
        let kind = match config.transport {
            MailTransport::Sendmail => {
                Kind::Sendmail(AsyncSendmailTransport::new_with_command(&config.sendmail))
            }
            MailTransport::Smtp => {
                let mut builder = smtp_builder(config)?.port(config.smtp_port);
                if let Some(user) = &config.username {
                    if !config.starttls && !is_loopback(&config.smtp_host) {
                        tracing::warn!(
                            host = %config.smtp_host,
                            "mail: SMTP AUTH without STARTTLS sends the password in clear over the network; set mail.starttls = true"
                        );
                    }
                    builder = builder.credentials(Credentials::new(
                        user.clone(),
                        config.password.expose().to_owned(),
                    ));
                }
                Kind::Smtp {
                    transport: builder.build(),
                    target: format!("{}:{}", config.smtp_host, config.smtp_port),
                }
            }
        };
        Ok(Transport { kind, from, to })
    }

    /// Sends one mail.
    pub async fn send(&self, mail: &Mail) -> Result<(), NotifyError> {
        let message = Message::builder()
            .from(self.from.clone())
            .to(self.to.clone())
            .subject(&mail.subject)
            .header(ContentType::TEXT_PLAIN)
            .body(mail.body.clone())?;
        match &self.kind {
            Kind::Smtp { transport, target } => {
                transport
                    .send(message)
                    .await
                    .map(drop)
                    .map_err(|source| NotifyError::SmtpSend {
                        target: target.clone(),
                        source,
                    })
            }
            Kind::Sendmail(transport) => transport
                .send(message)
                .await
                .map(drop)
                .map_err(NotifyError::from),
        }
    }
}

#[cfg(feature = "tls")]
fn smtp_builder(
    config: &MailConfig,
) -> Result<lettre::transport::smtp::AsyncSmtpTransportBuilder, NotifyError> {
    if config.starttls {
        return AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(&config.smtp_host).map_err(
            |source| NotifyError::Smtp {
                host: config.smtp_host.clone(),
                port: config.smtp_port,
                source,
            },
        );
    }
    Ok(AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(
        &config.smtp_host,
    ))
}

/// Without TLS support only plain SMTP exists (config validation refuses
/// `starttls = true` in such a build), which is what a local MTA on
/// localhost:25 speaks.
#[cfg(not(feature = "tls"))]
fn smtp_builder(
    config: &MailConfig,
) -> Result<lettre::transport::smtp::AsyncSmtpTransportBuilder, NotifyError> {
    Ok(AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(
        &config.smtp_host,
    ))
}

fn is_loopback(host: &str) -> bool {
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}
