//! AWS resources an environment uses (through the real aws-sdk clients; locally against moto's
//! server mode): the KMS key of an awskms seal.

pub mod kms;
