-- Demo data: two clinics that share a caller's phone number, so isolation is
-- visible at once. Fixed ids, so the README's grpcurl examples work as pasted.
-- Idempotent: `switchboard dev` runs it at every start; `supabase db reset`
-- runs it after the migrations.

insert into auth.users (id, email) values
  ('a0000000-0000-4000-8000-000000000001', 'admin@acme-dental.example'),
  ('a0000000-0000-4000-8000-000000000002', 'manager@acme-dental.example'),
  ('a0000000-0000-4000-8000-000000000003', 'viewer@acme-dental.example'),
  ('b0000000-0000-4000-8000-000000000001', 'admin@bluebird-clinic.example'),
  ('b0000000-0000-4000-8000-000000000002', 'manager@bluebird-clinic.example'),
  ('b0000000-0000-4000-8000-000000000003', 'viewer@bluebird-clinic.example')
on conflict (id) do nothing;

insert into public.organizations (id, name, slug, plan_tier) values
  ('0a000000-0000-4000-8000-00000000000a', 'Acme Dental', 'acme-dental', 'pro'),
  ('0b000000-0000-4000-8000-00000000000b', 'Bluebird Clinic', 'bluebird-clinic', 'starter')
on conflict (id) do nothing;

insert into public.profiles (id, org_id, role, full_name) values
  ('a0000000-0000-4000-8000-000000000001', '0a000000-0000-4000-8000-00000000000a', 'admin', 'Ada Admin'),
  ('a0000000-0000-4000-8000-000000000002', '0a000000-0000-4000-8000-00000000000a', 'manager', 'Max Manager'),
  ('a0000000-0000-4000-8000-000000000003', '0a000000-0000-4000-8000-00000000000a', 'viewer', 'Vic Viewer'),
  ('b0000000-0000-4000-8000-000000000001', '0b000000-0000-4000-8000-00000000000b', 'admin', 'Bea Admin'),
  ('b0000000-0000-4000-8000-000000000002', '0b000000-0000-4000-8000-00000000000b', 'manager', 'Mo Manager'),
  ('b0000000-0000-4000-8000-000000000003', '0b000000-0000-4000-8000-00000000000b', 'viewer', 'Val Viewer')
on conflict (id) do nothing;

insert into public.agents (id, org_id, name, phone_number, voice_id, llm_config) values
  ('aa000000-0000-4000-8000-000000000001', '0a000000-0000-4000-8000-00000000000a',
   'Acme Reception', '+18005550100', 'alloy',
   '{"model": "gpt-4o-mini", "temperature": 0.3, "system_prompt": "You are the front desk of Acme Dental."}'),
  ('bb000000-0000-4000-8000-000000000001', '0b000000-0000-4000-8000-00000000000b',
   'Bluebird Front Desk', '+18005550200', 'verse',
   '{"model": "gpt-4o", "temperature": 0.5, "system_prompt": "You answer for Bluebird Clinic."}')
on conflict (id) do nothing;

insert into public.customers (id, org_id, phone, name, email) values
  ('ca000000-0000-4000-8000-000000000001', '0a000000-0000-4000-8000-00000000000a',
   '+14155550123', 'Grace Hopper', 'grace@example.com'),
  ('cb000000-0000-4000-8000-000000000001', '0b000000-0000-4000-8000-00000000000b',
   '+14155550123', 'Alan Turing', 'alan@example.com')
on conflict (id) do nothing;
