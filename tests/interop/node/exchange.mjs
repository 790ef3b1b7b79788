// What the exchange answers to a record, as docs/contract.md §8, §11 and §12 describe it:
// used by vectors.mjs to check the documents against bad_messages.json (a fund that reads
// the documents must be able to predict its receipts), not by the producer.

import fs from 'node:fs'
import path from 'node:path'
import Ajv2020 from 'ajv/dist/2020.js'
import * as c from './contract.mjs'

let validators = null
function schemas () {
  if (!validators) {
    const ajv = new Ajv2020({ strict: false, validateFormats: false, allErrors: false })
    for (const name of ['common', 'signal', 'consent']) {
      ajv.addSchema(JSON.parse(fs.readFileSync(path.join(c.SCHEMAS, `${name}.schema.json`), 'utf8')))
    }
    validators = {
      signal: ajv.getSchema('https://schemas.help-exchange.invalid/v1/signal.schema.json'),
      consent: ajv.getSchema('https://schemas.help-exchange.invalid/v1/consent.schema.json')
    }
  }
  return validators
}

/** JSON.parse that refuses a member name twice in one object (I-JSON, RFC 7493). */
export function parseIJson (text) {
  const value = JSON.parse(text)
  let i = 0
  const stack = []
  while (i < text.length) {
    const ch = text[i]
    if (ch === '"') {
      let j = i + 1
      while (text[j] !== '"') j += text[j] === '\\' ? 2 : 1
      const str = JSON.parse(text.slice(i, j + 1))
      i = j + 1
      while (/\s/.test(text[i] ?? '')) i++
      const top = stack[stack.length - 1]
      if (text[i] === ':' && top) {
        if (top.has(str)) throw new SyntaxError('duplicate member name')
        top.add(str)
      }
      continue
    }
    if (ch === '{') stack.push(new Set())
    else if (ch === '[') stack.push(null)
    else if (ch === '}' || ch === ']') stack.pop()
    i++
  }
  return value
}

const SIGNAL_ID = /^[0-9a-f]{32}$/

/**
 * Predicts, for records read in order (each {topic, partition, offset, value_text | value_base64}),
 * the `expect` object of bad_messages.json: outcome, reason, receipt_topic, receipt_signal_id,
 * dead_letter (or forwarded_to_partition for a repartition). State (accepted ids, consents,
 * objections) lives for one call.
 */
export function predictExchange (records, { registry, partitions, now }) {
  const accepted = new Set()
  const consents = new Map() // pseudonym value -> Set(purpose)
  const withdrawn = new Map() // pseudonym value -> Set(purpose) whose latest consent event is a withdrawal
  const objections = new Set()
  return records.map((r) => {
    const raw = r.value_text != null ? Buffer.from(r.value_text, 'utf8') : Buffer.from(r.value_base64, 'base64')
    const signalTopic = /^help\.signals\.([a-z]+)\.v1$/.exec(r.topic)
    const isConsent = r.topic === 'help.consents.v1'
    let receiptTopic = signalTopic ? `help.receipts.${signalTopic[1]}.v1` : null
    let signalId = null
    const reject = (reason) => ({ outcome: 'rejete', reason, receipt_topic: receiptTopic, ...(receiptTopic ? { receipt_signal_id: signalId } : {}), dead_letter: true })
    // size → JSON → object → schema_version → fund → topic owner → signing key → signature
    // → schema → pseudonym key → partition → policy → doublon → opposition → consentement_retire (§12); the date
    // rules (docs/rules.md) are not placed in that order by the documents: here, after the
    // partition and before the policy.
    if (raw.length > c.MAX_MESSAGE_BYTES) return reject('message_trop_volumineux')
    let msg
    try {
      msg = parseIJson(new TextDecoder('utf-8', { fatal: true }).decode(raw))
    } catch {
      return reject('json_invalide')
    }
    if (typeof msg !== 'object' || msg === null || Array.isArray(msg)) return reject('schema_invalide')
    if (signalTopic && typeof msg.signal_id === 'string' && SIGNAL_ID.test(msg.signal_id)) signalId = msg.signal_id
    if (msg.schema_version !== c.SCHEMA_VERSION) return reject('version_schema_inconnue')
    if (!c.FUNDS.includes(msg.fund)) return reject('organisme_inconnu')
    if (isConsent) receiptTopic = `help.receipts.${msg.fund}.v1`
    if (signalTopic && msg.fund !== signalTopic[1]) return reject('topic_incorrect')
    const keyId = msg.signature?.key_id
    const key = (registry.funds?.[msg.fund]?.signing_keys ?? []).find((k) => k.key_id === keyId)
    if (!key) return reject('cle_signature_inconnue')
    if (key.status !== 'active') return reject('cle_signature_retiree')
    let good = false
    try {
      good = c.verify(msg, c.publicKeyFromRaw(key.public_key))
    } catch {
      good = false
    }
    if (!good) return reject('signature_invalide')
    if (!schemas()[isConsent ? 'consent' : 'signal'](msg)) return reject('schema_invalide')
    const activeExchange = (registry.exchange_keys ?? []).filter((k) => k.status === 'active').map((k) => k.key_id)
    if (!activeExchange.includes(msg.pseudonym.key_id)) return reject('cle_pseudonyme_refusee')
    if (!isConsent && msg.pseudonym_previous) { // §4.3, step 10a
      const link = msg.pseudonym_previous
      if (link.key_id === msg.pseudonym.key_id || link.value === msg.pseudonym.value) return reject('lien_pseudonyme_invalide')
      const entries = registry.exchange_keys ?? []
      const old = entries.find((k) => k.key_id === link.key_id)
      if (!old) return reject('lien_pseudonyme_invalide')
      if ((old.status ?? 'active') !== 'active') return reject('lien_pseudonyme_perime')
      const cur = entries.find((k) => k.key_id === msg.pseudonym.key_id)
      const order = (k) => [k.created_at, k.key_id]
      const [oc, ok] = order(old)
      const [nc, nk] = order(cur)
      if (oc > nc || (oc === nc && ok >= nk)) return reject('lien_pseudonyme_invalide')
    }
    const home = c.partitionFor(msg.pseudonym.value, partitions)
    if (r.partition !== home) return { outcome: 'repartitionne', forwarded_to_partition: home, receipt_topic: null, dead_letter: false }
    const who = msg.pseudonym.value
    try {
      if (isConsent) c.checkConsentDates(msg, now)
      else c.checkSignalDates(msg, now)
    } catch (err) {
      if (err instanceof c.Refused) return reject(err.reason)
      throw err
    }
    if (isConsent) {
      // Per purpose, in the order recorded (§10; the records here come in that order).
      const given = consents.get(who) ?? new Set()
      const gone = withdrawn.get(who) ?? new Set()
      if (msg.kind === 'consentement_donne') {
        msg.purposes.forEach((p) => { given.add(p); gone.delete(p) })
        objections.delete(who)
      } else if (msg.kind === 'consentement_retire') {
        msg.purposes.forEach((p) => { given.delete(p); gone.add(p) })
      } else {
        given.clear()
        gone.clear()
        objections.add(who)
      }
      consents.set(who, given)
      withdrawn.set(who, gone)
      return { outcome: 'accepte', receipt_topic: receiptTopic, receipt_signal_id: null, dead_letter: false }
    }
    try {
      c.checkPolicyOnWire(msg)
    } catch (err) {
      if (err instanceof c.Refused) return reject(err.reason)
      throw err
    }
    const retired = withdrawn.get(who)?.has(msg.purpose) ?? false
    if (msg.legal_basis.code === 'consentement' && !consents.get(who)?.has(msg.purpose)) return reject(retired ? 'consentement_retire' : 'consentement_absent')
    if (accepted.has(msg.signal_id)) return reject('doublon')
    if (objections.has(who)) return reject('opposition')
    if (retired) return reject('consentement_retire')
    accepted.add(msg.signal_id)
    return { outcome: 'accepte', receipt_topic: receiptTopic, receipt_signal_id: signalId, dead_letter: false }
  })
}
