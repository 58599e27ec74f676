//! Double-entry bookkeeping: every entry's postings sum to zero, so the ledger as a whole always
//! does. A tenant's balance is the sum of the postings to its credit account.

use gpucloud_model::{Money, TenantId};
use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Account {
    /// Prepaid credit the tenant can spend: positive is money the tenant has.
    TenantCredit(TenantId),
    /// What usage earned the provider.
    Revenue,
    /// Where operator-granted credit comes from.
    Grants,
    /// Where paid top-ups come from.
    Payments,
    /// Corrections (refunds, goodwill).
    Adjustments,
}

impl fmt::Display for Account {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Account::TenantCredit(t) => write!(f, "tenant:{t}"),
            Account::Revenue => f.write_str("revenue"),
            Account::Grants => f.write_str("grants"),
            Account::Payments => f.write_str("payments"),
            Account::Adjustments => f.write_str("adjustments"),
        }
    }
}

impl std::str::FromStr for Account {
    type Err = String;
    fn from_str(s: &str) -> Result<Account, String> {
        match s {
            "revenue" => Ok(Account::Revenue),
            "grants" => Ok(Account::Grants),
            "payments" => Ok(Account::Payments),
            "adjustments" => Ok(Account::Adjustments),
            other => other
                .strip_prefix("tenant:")
                .and_then(|t| TenantId::parse(t).ok())
                .map(Account::TenantCredit)
                .ok_or_else(|| format!("unknown account '{other}'")),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EntryKind {
    Usage,
    Grant,
    TopUp,
    Adjustment,
    /// A reservation owner's share of what its idle capacity earned as spot.
    LendingCredit,
}

impl EntryKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EntryKind::Usage => "usage",
            EntryKind::Grant => "grant",
            EntryKind::TopUp => "topup",
            EntryKind::Adjustment => "adjustment",
            EntryKind::LendingCredit => "lending-credit",
        }
    }
}

impl std::str::FromStr for EntryKind {
    type Err = String;
    fn from_str(s: &str) -> Result<EntryKind, String> {
        match s {
            "usage" => Ok(EntryKind::Usage),
            "grant" => Ok(EntryKind::Grant),
            "topup" => Ok(EntryKind::TopUp),
            "adjustment" => Ok(EntryKind::Adjustment),
            "lending-credit" => Ok(EntryKind::LendingCredit),
            other => Err(format!("unknown entry kind '{other}'")),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Posting {
    pub account: Account,
    pub amount: Money,
}

/// A balanced set of postings. Built only through the constructors, which balance by design.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub kind: EntryKind,
    pub tenant: TenantId,
    postings: Vec<Posting>,
}

impl Entry {
    fn pair(kind: EntryKind, tenant: &TenantId, to_tenant: Money, other: Account) -> Entry {
        Entry {
            kind,
            tenant: tenant.clone(),
            postings: vec![
                Posting { account: Account::TenantCredit(tenant.clone()), amount: to_tenant },
                Posting { account: other, amount: Money(-to_tenant.micros()) },
            ],
        }
    }

    /// Usage moves money from the tenant's credit to revenue.
    pub fn usage(tenant: &TenantId, amount: Money) -> Entry {
        Entry::pair(EntryKind::Usage, tenant, Money(-amount.micros()), Account::Revenue)
    }

    pub fn grant(tenant: &TenantId, amount: Money) -> Entry {
        Entry::pair(EntryKind::Grant, tenant, amount, Account::Grants)
    }

    pub fn top_up(tenant: &TenantId, amount: Money) -> Entry {
        Entry::pair(EntryKind::TopUp, tenant, amount, Account::Payments)
    }

    /// A correction: positive gives the tenant money back, negative takes it.
    pub fn adjustment(tenant: &TenantId, amount: Money) -> Entry {
        Entry::pair(EntryKind::Adjustment, tenant, amount, Account::Adjustments)
    }

    /// Gives a reservation owner part of the revenue its lent capacity brought in.
    pub fn lending_credit(tenant: &TenantId, amount: Money) -> Entry {
        Entry::pair(EntryKind::LendingCredit, tenant, amount, Account::Revenue)
    }

    pub fn postings(&self) -> &[Posting] {
        &self.postings
    }

    pub fn is_balanced(&self) -> bool {
        self.postings.iter().map(|p| i128::from(p.amount.micros())).sum::<i128>() == 0
    }
}
