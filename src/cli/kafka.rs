//! Kafka connection flags shared by `run` and `simulate`: TLS, SASL and librdkafka passthrough.
//!
//! Secrets never come from a flag (a flag's value is visible to every user in `ps`): the SASL
//! password is read from `CITYSTREAM_KAFKA_SASL_PASSWORD` or from the file named by
//! `CITYSTREAM_KAFKA_SASL_PASSWORD_FILE`. Passthrough settings that look secret
//! (`sasl.password`, `ssl.key.password`, …) are redacted wherever a configuration is printed
//! ([`Secret`], [`KafkaOption`]'s `Debug`) and should be passed in `CITYSTREAM_KAFKA_OPTIONS`
//! rather than with `--kafka-option`.

use std::fmt;
use std::path::PathBuf;

use clap::{Args, ValueEnum};
use rdkafka::ClientConfig;

use super::ConfigError;

/// Environment variable holding the SASL password.
pub const PASSWORD_ENV: &str = "CITYSTREAM_KAFKA_SASL_PASSWORD";
/// Environment variable naming a file that holds the SASL password (e.g. a mounted secret).
pub const PASSWORD_FILE_ENV: &str = "CITYSTREAM_KAFKA_SASL_PASSWORD_FILE";

/// How to reach Kafka securely; flattened into `run` and `simulate`.
#[derive(Debug, Clone, Default, Args)]
pub struct KafkaConnectionArgs {
    /// Kafka security protocol [default: sasl_ssl with --kafka-sasl-username, ssl with --kafka-ca, else plaintext].
    #[arg(long, env = "CITYSTREAM_KAFKA_SECURITY_PROTOCOL", value_enum, value_name = "PROTOCOL")]
    pub kafka_security_protocol: Option<SecurityProtocol>,
    /// SASL mechanism.
    #[arg(long, env = "CITYSTREAM_KAFKA_SASL_MECHANISM", value_enum, default_value = "SCRAM-SHA-512", value_name = "MECHANISM")]
    pub kafka_sasl_mechanism: SaslMechanism,
    /// SASL user name; the password comes only from the environment: CITYSTREAM_KAFKA_SASL_PASSWORD,
    /// or a file named by CITYSTREAM_KAFKA_SASL_PASSWORD_FILE.
    #[arg(long, env = "CITYSTREAM_KAFKA_SASL_USERNAME", value_name = "USER")]
    pub kafka_sasl_username: Option<String>,
    /// CA certificate(s) (PEM) that signed the brokers' TLS certificates [default: the system's].
    #[arg(long, env = "CITYSTREAM_KAFKA_CA", value_name = "PEM_FILE")]
    pub kafka_ca: Option<PathBuf>,
    /// Extra librdkafka setting, KEY=VALUE, applied last to every Kafka client (repeatable; in the
    /// environment: KEY=VALUE;KEY=VALUE — put secret values there, not on the command line).
    #[arg(long = "kafka-option", env = "CITYSTREAM_KAFKA_OPTIONS", value_name = "KEY=VALUE", value_parser = parse_kafka_option, value_delimiter = ';', hide_env_values = true)]
    pub kafka_options: Vec<KafkaOption>,
}

/// librdkafka's `security.protocol`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
#[value(rename_all = "snake_case")]
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
    /// The librdkafka value.
    pub fn as_str(self) -> &'static str {
        match self {
            SecurityProtocol::Plaintext => "plaintext",
            SecurityProtocol::Ssl => "ssl",
            SecurityProtocol::SaslPlaintext => "sasl_plaintext",
            SecurityProtocol::SaslSsl => "sasl_ssl",
        }
    }

    fn sasl(self) -> bool {
        matches!(self, SecurityProtocol::SaslPlaintext | SecurityProtocol::SaslSsl)
    }

    fn tls(self) -> bool {
        matches!(self, SecurityProtocol::Ssl | SecurityProtocol::SaslSsl)
    }
}

/// librdkafka's `sasl.mechanism` (those that need no extra libraries).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum SaslMechanism {
    /// SCRAM with SHA-512.
    #[default]
    #[value(name = "SCRAM-SHA-512")]
    ScramSha512,
    /// SCRAM with SHA-256.
    #[value(name = "SCRAM-SHA-256")]
    ScramSha256,
    /// PLAIN (use only over TLS).
    #[value(name = "PLAIN")]
    Plain,
}

impl SaslMechanism {
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
    /// The mechanism.
    pub mechanism: SaslMechanism,
    /// The user.
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

impl KafkaConnectionArgs {
    /// Checks the flags and reads the password from the environment. Warns (without the
    /// value) when a secret passthrough setting was given on the command line.
    pub fn validate(&self) -> Result<KafkaClientSettings, ConfigError> {
        for o in self.kafka_options.iter().filter(|o| !o.key.is_empty() && is_secret_key(&o.key)) {
            let on_command_line = std::env::args().any(|a| a.contains(&format!("{}=", o.key)));
            if on_command_line {
                tracing::warn!(
                    "--kafka-option {}=*** is on the command line, where other users of this host can read it (ps); pass it in CITYSTREAM_KAFKA_OPTIONS instead",
                    o.key
                );
            }
        }
        self.validate_with(|k| std::env::var(k).ok())
    }

    /// [`KafkaConnectionArgs::validate`] with the environment given as a function (tests).
    pub fn validate_with(&self, env: impl Fn(&str) -> Option<String>) -> Result<KafkaClientSettings, ConfigError> {
        let username = self.kafka_sasl_username.as_deref().map(str::trim).filter(|u| !u.is_empty());
        let protocol = match (self.kafka_security_protocol, username, &self.kafka_ca) {
            (Some(p), _, _) => Some(p),
            (None, Some(_), _) => Some(SecurityProtocol::SaslSsl),
            (None, None, Some(_)) => Some(SecurityProtocol::Ssl),
            (None, None, None) => None,
        };
        let password = match (env(PASSWORD_ENV), env(PASSWORD_FILE_ENV)) {
            (Some(p), _) if !p.is_empty() => Some(Secret::new(p)),
            (_, Some(file)) if !file.trim().is_empty() => {
                let text = std::fs::read_to_string(file.trim())
                    .map_err(|e| ConfigError::new("CITYSTREAM_KAFKA_SASL_PASSWORD_FILE", format!("cannot read {}: {e}", file.trim())))?;
                Some(Secret::new(text.trim_end_matches(['\n', '\r'])))
            }
            _ => None,
        };
        let sasl = match (protocol.is_some_and(SecurityProtocol::sasl), username, password) {
            (true, Some(u), Some(p)) => Some(SaslSettings { mechanism: self.kafka_sasl_mechanism, username: u.to_owned(), password: p }),
            (true, None, _) => {
                return Err(ConfigError::new("--kafka-sasl-username", "is required with --kafka-security-protocol sasl_ssl or sasl_plaintext"));
            }
            (true, Some(_), None) => {
                return Err(ConfigError::new(
                    "CITYSTREAM_KAFKA_SASL_PASSWORD",
                    "is not set: SASL needs a password, given in the environment (CITYSTREAM_KAFKA_SASL_PASSWORD or CITYSTREAM_KAFKA_SASL_PASSWORD_FILE), never as a flag",
                ));
            }
            (false, Some(_), _) => {
                return Err(ConfigError::new(
                    "--kafka-sasl-username",
                    format!(
                        "is given but --kafka-security-protocol is {}; use sasl_ssl (or sasl_plaintext)",
                        protocol.map_or("plaintext", SecurityProtocol::as_str)
                    ),
                ));
            }
            (false, None, _) => None,
        };
        if let Some(ca) = &self.kafka_ca {
            if !protocol.is_some_and(SecurityProtocol::tls) {
                return Err(ConfigError::new(
                    "--kafka-ca",
                    format!("is given but --kafka-security-protocol is {}; use ssl or sasl_ssl", protocol.map_or("plaintext", SecurityProtocol::as_str)),
                ));
            }
            let text = std::fs::read_to_string(ca).map_err(|e| ConfigError::new("--kafka-ca", format!("cannot read {}: {e}", ca.display())))?;
            if !text.contains("-----BEGIN CERTIFICATE-----") {
                return Err(ConfigError::new("--kafka-ca", format!("{} holds no PEM certificate (-----BEGIN CERTIFICATE-----)", ca.display())));
            }
        }
        let settings = KafkaClientSettings { protocol, sasl, ca: self.kafka_ca.clone(), extra: self.kafka_options.clone() };
        settings.check_options()?;
        Ok(settings)
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

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct T {
        #[command(flatten)]
        k: KafkaConnectionArgs,
    }

    fn args(a: &[&str]) -> KafkaConnectionArgs {
        T::try_parse_from(std::iter::once("t").chain(a.iter().copied())).unwrap().k
    }

    const MARK: &str = "pw-MARKER-7c1f";

    #[test]
    fn sasl_needs_user_and_password_from_env() {
        let env = |k: &str| (k == PASSWORD_ENV).then(|| MARK.to_owned());
        let s = args(&["--kafka-sasl-username", "alice"]).validate_with(env).unwrap();
        assert_eq!(s.protocol, Some(SecurityProtocol::SaslSsl), "a user implies sasl_ssl");
        assert_eq!(s.sasl.as_ref().unwrap().password.expose(), MARK);
        assert!(!format!("{s:?}").contains(MARK), "Debug shows no password: {s:?}");
        assert!(!s.describe().contains(MARK));
        let mut c = ClientConfig::new();
        s.apply(&mut c);
        assert_eq!(c.get("sasl.password"), Some(MARK));
        assert_eq!(c.get("security.protocol"), Some("sasl_ssl"));
        assert_eq!(c.get("sasl.mechanism"), Some("SCRAM-SHA-512"));

        let e = args(&["--kafka-sasl-username", "alice"]).validate_with(|_| None).unwrap_err().to_string();
        assert!(e.contains("CITYSTREAM_KAFKA_SASL_PASSWORD"), "{e}");
        let e = args(&["--kafka-security-protocol", "sasl_ssl"]).validate_with(env).unwrap_err().to_string();
        assert!(e.contains("--kafka-sasl-username"), "{e}");
        let e = args(&["--kafka-security-protocol", "ssl", "--kafka-sasl-username", "a"]).validate_with(env).unwrap_err().to_string();
        assert!(e.contains("--kafka-sasl-username") && e.contains("sasl_ssl"), "{e}");
        assert_eq!(args(&[]).validate_with(env).unwrap(), KafkaClientSettings::default(), "no flags: plaintext, no password used");
    }

    #[test]
    fn password_file() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("pw");
        std::fs::write(&f, format!("{MARK}\n")).unwrap();
        let path = f.display().to_string();
        let s = args(&["--kafka-sasl-username", "a"]).validate_with(|k| (k == PASSWORD_FILE_ENV).then(|| path.clone())).unwrap();
        assert_eq!(s.sasl.unwrap().password.expose(), MARK);
        let e = args(&["--kafka-sasl-username", "a"]).validate_with(|k| (k == PASSWORD_FILE_ENV).then(|| "/nonexistent/pw".to_owned())).unwrap_err();
        assert!(e.to_string().contains("CITYSTREAM_KAFKA_SASL_PASSWORD_FILE") && e.to_string().contains("/nonexistent/pw"));
    }

    #[test]
    fn ca_file_is_checked() {
        let e = args(&["--kafka-ca", "/nonexistent/ca.pem"]).validate_with(|_| None).unwrap_err().to_string();
        assert!(e.contains("--kafka-ca") && e.contains("/nonexistent/ca.pem"), "{e}");
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("ca.pem");
        std::fs::write(&f, "not a certificate").unwrap();
        let e = args(&["--kafka-ca", f.to_str().unwrap()]).validate_with(|_| None).unwrap_err().to_string();
        assert!(e.contains("--kafka-ca") && e.contains("PEM"), "{e}");
        let e = args(&["--kafka-security-protocol", "plaintext", "--kafka-ca", f.to_str().unwrap()]).validate_with(|_| None).unwrap_err().to_string();
        assert!(e.contains("--kafka-ca") && e.contains("plaintext"), "{e}");
    }

    #[test]
    fn passthrough_is_checked_and_redacted() {
        let s = args(&["--kafka-option", "socket.timeout.ms=5000", "--kafka-option", &format!("ssl.key.password={MARK}")]).validate_with(|_| None).unwrap();
        assert_eq!(s.extra.len(), 2);
        let shown = format!("{s:?} {}", s.describe());
        assert!(shown.contains("socket.timeout.ms=5000") && !shown.contains(MARK), "{shown}");
        let mut c = ClientConfig::new();
        s.apply(&mut c);
        assert_eq!(c.get("ssl.key.password"), Some(MARK));

        let e = args(&["--kafka-option", "no.such.property=1"]).validate_with(|_| None).unwrap_err().to_string();
        assert!(e.contains("--kafka-option") && e.contains("no.such.property"), "{e}");
        let e = args(&["--kafka-option", "socket.timeout.ms=soon"]).validate_with(|_| None).unwrap_err().to_string();
        assert!(e.contains("socket.timeout.ms"), "{e}");
        let e = args(&["--kafka-option", &format!("security.protocol={MARK}")]).validate_with(|_| None).unwrap_err().to_string();
        assert!(e.contains("security.protocol") && !e.contains(MARK), "a refused value is not echoed: {e}");
        let e = args(&["--kafka-option", MARK]).validate_with(|_| None).unwrap_err().to_string();
        assert!(e.contains("--kafka-option") && e.contains("entry 1") && !e.contains(MARK), "a malformed option is not echoed: {e}");
        assert!(is_secret_key("sasl.password") && is_secret_key("sasl.oauthbearer.client.secret") && is_secret_key("ssl.key.pem"));
        assert!(!is_secret_key("ssl.ca.location") && !is_secret_key("sasl.username"));
    }

    #[test]
    fn options_split_on_semicolons() {
        let k = args(&["--kafka-option", "a.b=1;c.d=2"]);
        assert_eq!(k.kafka_options.len(), 2);
        assert_eq!(format!("{:?}", k.kafka_options), "[a.b=1, c.d=2]");
    }
}
