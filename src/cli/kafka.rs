//! Kafka connection flags shared by `run` and `simulate`: TLS, SASL and librdkafka passthrough,
//! turned into the kafka module's [`KafkaClientSettings`].
//!
//! Secrets never come from a flag (a flag's value is visible to every user in `ps`): the SASL
//! password is read from `CITYSTREAM_KAFKA_SASL_PASSWORD` or from the file named by
//! `CITYSTREAM_KAFKA_SASL_PASSWORD_FILE`. Passthrough settings that look secret
//! (`sasl.password`, `ssl.key.password`, …) are redacted wherever a configuration is printed
//! ([`Secret`], [`KafkaOption`]'s `Debug`) and should be passed in `CITYSTREAM_KAFKA_OPTIONS`
//! rather than with `--kafka-option`.

use std::path::PathBuf;

use clap::builder::PossibleValue;
use clap::{Args, ValueEnum};
#[cfg(test)]
use rdkafka::ClientConfig;

use super::ConfigError;
use crate::kafka::settings::{KafkaClientSettings, KafkaOption, SaslMechanism, SaslSettings, Secret, SecurityProtocol, is_secret_key, parse_kafka_option};

// The settings are the kafka module's; here they only learn how to be flags.
impl ValueEnum for SecurityProtocol {
    fn value_variants<'a>() -> &'a [Self] {
        &SecurityProtocol::ALL
    }

    fn to_possible_value(&self) -> Option<PossibleValue> {
        Some(PossibleValue::new(self.as_str()))
    }
}

impl ValueEnum for SaslMechanism {
    fn value_variants<'a>() -> &'a [Self] {
        &SaslMechanism::ALL
    }

    fn to_possible_value(&self) -> Option<PossibleValue> {
        Some(PossibleValue::new(self.as_str()))
    }
}

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
