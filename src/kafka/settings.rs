//! Connection settings every Kafka client of citystream gets (consumers, the producer, admin
//! clients): security protocol, SASL, CA, and librdkafka passthrough options.
//!
//! Secrets cannot leak through these types: [`Secret`] has no `Display` and a redacting `Debug`,
//! [`KafkaOption`]'s `Debug` hides values of secret-looking keys, and
//! [`KafkaClientSettings::scrub`] removes secret values from library error texts.

use std::fmt;
use std::path::PathBuf;

use rdkafka::ClientConfig;

use crate::error::ConfigError;

/// librdkafka's `security.protocol`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecurityProtocol {
    /// No TLS, no authentication.
    Plaintext,
    /// TLS, no SASL.
    Ssl,
    /// SASL without TLS (the password travels in the clear with PLAIN).
    SaslPlaintext,
    /// SASL over TLS.
    SaslSsl,
}

impl SecurityProtocol {
    /// Every protocol, in the order `--help` lists them.
    pub const ALL: [SecurityProtocol; 4] = [SecurityProtocol::Plaintext, SecurityProtocol::Ssl, SecurityProtocol::SaslPlaintext, SecurityProtocol::SaslSsl];

    /// The librdkafka value.
    pub fn as_str(self) -> &'static str {
        match self {
            SecurityProtocol::Plaintext => "plaintext",
            SecurityProtocol::Ssl => "ssl",
            SecurityProtocol::SaslPlaintext => "sasl_plaintext",
            SecurityProtocol::SaslSsl => "sasl_ssl",
        }
    }

    /// Whether the protocol authenticates with SASL.
    pub fn sasl(self) -> bool {
        matches!(self, SecurityProtocol::SaslPlaintext | SecurityProtocol::SaslSsl)
    }

    /// Whether the protocol encrypts with TLS.
    pub fn tls(self) -> bool {
        matches!(self, SecurityProtocol::Ssl | SecurityProtocol::SaslSsl)
    }
}

/// librdkafka's `sasl.mechanism` (those that need no extra libraries).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SaslMechanism {
    /// SCRAM with SHA-512.
    #[default]
    ScramSha512,
    /// SCRAM with SHA-256.
    ScramSha256,
    /// PLAIN (use only over TLS).
    Plain,
}

impl SaslMechanism {
    /// Every mechanism, in the order `--help` lists them.
    pub const ALL: [SaslMechanism; 3] = [SaslMechanism::ScramSha512, SaslMechanism::ScramSha256, SaslMechanism::Plain];

    /// The librdkafka value.
    pub fn as_str(self) -> &'static str {
        match self {
            SaslMechanism::ScramSha512 => "SCRAM-SHA-512",
            SaslMechanism::ScramSha256 => "SCRAM-SHA-256",
            SaslMechanism::Plain => "PLAIN",
        }
    }
}

/// A secret string: `Debug` prints `***`, there is no `Display`; [`Secret::expose`] is the only
/// way to the value, so a secret cannot end up in a log or error message by accident.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The value, for handing to the client library only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// Whether a librdkafka setting holds a secret (its value is never printed).
pub fn is_secret_key(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    ["password", "secret", "jaas", "key.pem", "token", "oauthbearer.config", "credential"].iter().any(|s| k.contains(s))
}

/// One `--kafka-option KEY=VALUE` setting; `Debug` redacts values of secret-looking keys.
#[derive(Clone, PartialEq, Eq)]
pub struct KafkaOption {
    /// The librdkafka property.
    pub key: String,
    /// Its value.
    pub value: String,
}

impl KafkaOption {
    /// The value as it may be shown: `***` for secret keys.
    pub fn shown_value(&self) -> &str {
        if self.key.is_empty() || is_secret_key(&self.key) { "***" } else { &self.value }
    }
}

impl fmt::Debug for KafkaOption {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() { f.write_str("<not KEY=VALUE>") } else { write!(f, "{}={}", self.key, self.shown_value()) }
    }
}

/// Parses `KEY=VALUE` into a [`KafkaOption`]. It never fails, so that clap cannot echo a
/// malformed (possibly secret) value: an entry without a key is kept with an empty key and
/// refused by [`KafkaClientSettings::check_options`] without showing it.
pub fn parse_kafka_option(s: &str) -> Result<KafkaOption, String> {
    Ok(match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => KafkaOption { key: k.trim().to_owned(), value: v.to_owned() },
        _ => KafkaOption { key: String::new(), value: s.to_owned() },
    })
}

/// SASL settings of a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SaslSettings {
    /// How the client authenticates (SCRAM-SHA-512, SCRAM-SHA-256 or PLAIN).
    pub mechanism: SaslMechanism,
    /// The SASL user name.
    pub username: String,
    /// The password (from the environment only).
    pub password: Secret,
}

/// Checked connection settings, applied to every Kafka client (consumers, producer, admin).
/// `Debug` shows no secret.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KafkaClientSettings {
    /// `security.protocol` (None: librdkafka's default, plaintext).
    pub protocol: Option<SecurityProtocol>,
    /// SASL user and password.
    pub sasl: Option<SaslSettings>,
    /// `ssl.ca.location`.
    pub ca: Option<PathBuf>,
    /// Passthrough settings, applied last.
    pub extra: Vec<KafkaOption>,
}

impl KafkaClientSettings {
    /// Settings with only passthrough options (plaintext unless the options say otherwise).
    pub fn with_options(extra: Vec<KafkaOption>) -> Self {
        KafkaClientSettings { extra, ..Default::default() }
    }

    /// Sets the connection settings on a librdkafka configuration.
    pub fn apply(&self, c: &mut ClientConfig) {
        if let Some(p) = self.protocol {
            c.set("security.protocol", p.as_str());
        }
        if let Some(s) = &self.sasl {
            c.set("sasl.mechanism", s.mechanism.as_str()).set("sasl.username", &s.username).set("sasl.password", s.password.expose());
        }
        if let Some(ca) = &self.ca {
            c.set("ssl.ca.location", ca.display().to_string());
        }
        for o in &self.extra {
            c.set(&o.key, &o.value);
        }
    }

    /// The secret values these settings hold (to scrub them from library error texts).
    pub fn secret_values(&self) -> Vec<&str> {
        let mut out: Vec<&str> =
            self.extra.iter().filter(|o| (o.key.is_empty() || is_secret_key(&o.key)) && !o.value.is_empty()).map(|o| o.value.as_str()).collect();
        if let Some(s) = &self.sasl
            && !s.password.expose().is_empty()
        {
            out.push(s.password.expose());
        }
        out
    }

    /// `text` with every secret value replaced by `***` (values shorter than 4 characters are
    /// left alone: replacing them would garble the text and hide nothing worth hiding).
    pub fn scrub(&self, text: &str) -> String {
        let mut out = text.to_owned();
        for s in self.secret_values() {
            if s.chars().count() >= 4 {
                out = out.replace(s, "***");
            }
        }
        out
    }

    /// A one-line description for logs, without secrets.
    pub fn describe(&self) -> String {
        let mut parts = vec![self.protocol.map_or("plaintext", SecurityProtocol::as_str).to_owned()];
        if let Some(s) = &self.sasl {
            parts.push(format!("{} as {:?}", s.mechanism.as_str(), s.username));
        }
        if let Some(ca) = &self.ca {
            parts.push(format!("CA {}", ca.display()));
        }
        if !self.extra.is_empty() {
            parts.push(format!("options {:?}", self.extra));
        }
        parts.join(", ")
    }
}

impl KafkaClientSettings {
    /// Lets librdkafka check every passthrough setting now, so that a typo is reported naming
    /// `--kafka-option` and the key before anything starts (values of secret keys are not shown).
    pub fn check_options(&self) -> Result<(), ConfigError> {
        for (i, o) in self.extra.iter().enumerate() {
            if o.key.is_empty() {
                return Err(ConfigError::new(
                    "--kafka-option",
                    format!("entry {} is not KEY=VALUE (a librdkafka property, e.g. socket.timeout.ms=30000)", i + 1),
                ));
            }
            let mut c = ClientConfig::new();
            c.set(&o.key, &o.value);
            if let Err(e) = c.create_native_config() {
                return Err(ConfigError::new("--kafka-option", format!("{}: {}", o.key, self.scrub(&config_problem(&e, &[&o.value])))));
            }
        }
        // Together with the dedicated flags (e.g. a CA file librdkafka cannot use).
        let mut c = ClientConfig::new();
        self.apply(&mut c);
        let values: Vec<&str> = self.extra.iter().map(|o| o.value.as_str()).collect();
        c.create_native_config().map(drop).map_err(|e| ConfigError::new("--kafka-option", self.scrub(&config_problem(&e, &values))))
    }
}

/// librdkafka's description of a refused setting, with the given values (which may be
/// secret, or a secret under a mistyped key) replaced by `***`.
fn config_problem(e: &rdkafka::error::KafkaError, values: &[&str]) -> String {
    let mut text = match e {
        rdkafka::error::KafkaError::ClientConfig(_, description, _, _) => description.clone(),
        other => other.to_string(),
    };
    for v in values.iter().filter(|v| v.chars().count() >= 4) {
        text = text.replace(v, "***");
    }
    text
}
