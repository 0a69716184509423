//! `switchboard.v1.CustomerService`.

use tonic::{Request, Response, Status};

use super::parse::{in_field, target_org, with_org};
use crate::{
    api::{
        convert::customer_to_pb,
        pb::{self, customer_service_server::CustomerService},
    },
    app::CustomersService,
    auth::claims_of,
    domain::{
        model::{parse_optional_text, MAX_EMAIL_CHARS, MAX_NAME_CHARS},
        routing::parse_attributes,
        CustomerId, CustomerUpsert, OrgId, PageRequest, PhoneNumber,
    },
    error::Error,
};

pub struct CustomerApi {
    customers: CustomersService,
}

impl CustomerApi {
    pub(crate) fn new(customers: CustomersService) -> Self {
        CustomerApi { customers }
    }
}

#[tonic::async_trait]
impl CustomerService for CustomerApi {
    async fn lookup_customer(
        &self,
        request: Request<pb::LookupCustomerRequest>,
    ) -> Result<Response<pb::Customer>, Status> {
        let claims = claims_of(&request)?;
        let phone = PhoneNumber::parse(&request.get_ref().phone).map_err(in_field("phone"))?;
        let org_id = match request.get_ref().org_id.trim() {
            "" => None,
            org_id => Some(OrgId::parse(org_id)?),
        };
        let customer = self.customers.lookup(&claims, &phone, org_id).await?;
        Ok(with_org(customer_to_pb(&customer), customer.org_id))
    }

    async fn get_customer(
        &self,
        request: Request<pb::GetCustomerRequest>,
    ) -> Result<Response<pb::Customer>, Status> {
        let claims = claims_of(&request)?;
        let id = CustomerId::parse(&request.get_ref().id)?;
        let customer = self.customers.get(&claims, id).await?;
        Ok(with_org(customer_to_pb(&customer), customer.org_id))
    }

    async fn list_customers(
        &self,
        request: Request<pb::ListCustomersRequest>,
    ) -> Result<Response<pb::ListCustomersResponse>, Status> {
        let claims = claims_of(&request)?;
        let page = PageRequest::parse(request.get_ref().page_size, &request.get_ref().page_token)?;
        let page = self.customers.list(&claims, page).await?;
        Ok(Response::new(pb::ListCustomersResponse {
            customers: page.items.iter().map(customer_to_pb).collect(),
            next_page_token: page.next_page_token,
        }))
    }

    async fn upsert_customer(
        &self,
        request: Request<pb::UpsertCustomerRequest>,
    ) -> Result<Response<pb::Customer>, Status> {
        let claims = claims_of(&request)?;
        let customer = request
            .into_inner()
            .customer
            .ok_or_else(|| Error::invalid("customer is required"))?;
        let upsert = CustomerUpsert {
            org_id: target_org(&claims, &customer.org_id)?,
            phone: PhoneNumber::parse_for_write(&customer.phone).map_err(in_field("phone"))?,
            name: parse_optional_text("name", &customer.name, MAX_NAME_CHARS)?,
            email: parse_optional_text("email", &customer.email, MAX_EMAIL_CHARS)?,
            attributes: parse_attributes("customer.attributes", customer.attributes)?,
        };
        let customer = self.customers.upsert(&claims, &upsert).await?;
        Ok(with_org(customer_to_pb(&customer), customer.org_id))
    }

    async fn delete_customer(
        &self,
        request: Request<pb::DeleteCustomerRequest>,
    ) -> Result<Response<()>, Status> {
        let claims = claims_of(&request)?;
        let id = CustomerId::parse(&request.get_ref().id)?;
        let customer = self.customers.delete(&claims, id).await?;
        Ok(with_org((), customer.org_id))
    }
}
