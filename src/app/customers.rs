//! Customers (the CRM records `ResolveAgent` returns as the caller): reads
//! under the caller's claims, and writes that evict the caller record they
//! changed (through `Data::write`).

use super::data::Data;
use crate::{
    auth::Claims,
    cache::Cache,
    domain::{Customer, CustomerId, CustomerUpsert, OrgId, Page, PageRequest, PhoneNumber},
    error::Error,
    store::PgStore,
};

#[derive(Clone)]
pub struct CustomersService {
    data: Data,
}

impl CustomersService {
    pub(crate) fn new(store: PgStore, cache: Cache) -> Self {
        CustomersService {
            data: Data::new(store, cache),
        }
    }

    /// By phone number; `org_id` narrows it to one org (a caller in
    /// several orgs otherwise has several records).
    pub(crate) async fn lookup(
        &self,
        claims: &Claims,
        phone: &PhoneNumber,
        org_id: Option<OrgId>,
    ) -> Result<Customer, Error> {
        self.data
            .reads()
            .lookup_customer(claims, phone, org_id)
            .await
    }

    pub(crate) async fn get(&self, claims: &Claims, id: CustomerId) -> Result<Customer, Error> {
        self.data.reads().get_customer(claims, id).await
    }

    pub(crate) async fn list(
        &self,
        claims: &Claims,
        page: PageRequest,
    ) -> Result<Page<Customer>, Error> {
        self.data.reads().list_customers(claims, page).await
    }

    pub(crate) async fn upsert(
        &self,
        claims: &Claims,
        customer: &CustomerUpsert,
    ) -> Result<Customer, Error> {
        self.data
            .write(|store| store.upsert_customer(claims, customer))
            .await
    }

    pub(crate) async fn delete(&self, claims: &Claims, id: CustomerId) -> Result<Customer, Error> {
        self.data
            .write(|store| store.delete_customer(claims, id))
            .await
    }
}
