//! Paywall PhysicalAPI messages (`paywall.md`, seed 002): the sync sale body built from an
//! MQTT command, the field rules checked before any request, the MerchantUniqueCode, and
//! the answers parsed case-insensitively. No I/O.
//!
//! Layout: `request` (the request bodies as Paywall reads them and the MerchantUniqueCode),
//! `validate` (the field rules, and the sale body built from a command once they hold) and
//! `answer` (the reply envelope, payments and the `PaymentStatus` table). Everything is
//! re-exported here: callers use `paywall::api::…`.

mod answer;
mod request;
#[cfg(test)]
mod tests;
mod validate;

pub use answer::{
    Envelope, PaymentView, Status, STATUS_CANCELLED, STATUS_FAILED, STATUS_ON_DEVICE,
    STATUS_SUCCEEDED, STATUS_WAITING,
};
pub use request::{
    merchant_unique_code, Method, PaymentRef, Product, ReceiptOptions, ReceiptText, SaleRequest,
    MUC_NAMESPACE,
};
pub use validate::{
    sale_request, FieldError, CUSTOMER_FIELDS, DISPLAY_CODE_MAX, FONT_SIZE_MAX, PRODUCT_NAME_MAX,
    RECEIPT_TEXT_MAX,
};
