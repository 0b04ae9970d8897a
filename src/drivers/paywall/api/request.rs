//! The PhysicalAPI request bodies as Paywall reads them (PascalCase JSON): the sync sale
//! ([`SaleRequest`] with its products, payment methods and receipt texts) and the
//! payment reference of `sync/cancel` and `sync/sale/rollback`; amounts are JSON decimals
//! written from minor units. Also the MerchantUniqueCode every sale carries
//! ([`merchant_unique_code`]), fixed per request so a retry never makes a second sale.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::drivers::cloud::money;

/// Namespace of posbridge's MerchantUniqueCodes (UUID v5). Fixed for ever: changing it
/// would give a retried request a new code and so a second sale.
pub const MUC_NAMESPACE: Uuid = Uuid::from_u128(0x6f0e_3c2a_9b1d_5e47_a0c8_2d4f_1b6e_8a93);

/// MerchantUniqueCode of a request: UUID v5 of `"<agent_id>/<request id>"` in
/// [`MUC_NAMESPACE`]. The agent id keeps two agents of one merchant apart even if their
/// cloud POS reuse request ids.
pub fn merchant_unique_code(agent_id: &str, request_id: &str) -> Uuid {
    Uuid::new_v5(&MUC_NAMESPACE, format!("{agent_id}/{request_id}").as_bytes())
}

#[serde_with::skip_serializing_none]
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct SaleRequest {
    pub terminal_id: Option<String>,
    pub terminal_tag_code: Option<String>,
    #[serde(default)]
    pub send_notification_device_disconnected: bool,
    pub merchant_unique_code: String,
    pub display_code: Option<String>,
    /// A JSON decimal written from minor units, never through a float.
    pub amount: Box<RawValue>,
    pub currency_id: u32,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<Method>,
    #[serde(default)]
    pub split_payment_support: bool,
    pub customer: Option<Map<String, Value>>,
    #[serde(default)]
    pub products: Vec<Product>,
    #[serde(default)]
    pub skip_print_customer: bool,
    #[serde(default)]
    pub skip_print_merchant: bool,
    #[serde(default)]
    pub skip_payment_option_screen: bool,
    pub receipt_options: Option<ReceiptOptions>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Method {
    pub payment_method_id: i64,
}

#[serde_with::skip_serializing_none]
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Product {
    pub name: String,
    pub tax_group_id: i64,
    pub unit_code_id: i64,
    pub amount: Box<RawValue>,
    pub quantity: i64,
    pub payment_method_id: Option<i64>,
}

#[serde_with::skip_serializing_none]
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ReceiptOptions {
    pub top_support: bool,
    pub top: Option<ReceiptText>,
    pub bottom_support: bool,
    pub bottom: Option<ReceiptText>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ReceiptText {
    pub text: String,
    pub font_size: i64,
}

/// Body of `sync/cancel`, `sync/sale/rollback`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct PaymentRef {
    pub payment_request_id: String,
}

pub(super) fn raw_decimal(minor: i64, exp: u32) -> Box<RawValue> {
    // A formatted decimal is always valid JSON; the fallback is unreachable in practice.
    RawValue::from_string(money::format_minor(minor, exp))
        .unwrap_or_else(|_| RawValue::from_string("0".into()).unwrap_or_default())
}
